"""Delivery: the transactional outbox and the destinations it feeds (DESIGN §3)."""
