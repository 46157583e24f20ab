"""Adapters translate between the bridge and other systems; they never touch the database."""
