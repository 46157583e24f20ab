"""API clients: who may call, with which role, for which organisation."""
