"""Imports of history: referrals with their received times and their cases' events (NDJSON)."""
