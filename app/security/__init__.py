"""Who is calling and what they may do: API clients, keys and tokens, roles, route rules."""
