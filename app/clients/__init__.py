"""Managing API clients (admin): create, list, revoke, secrets and public keys."""
