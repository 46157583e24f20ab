"""Delivery: the dispatcher that sends the outbox (app.outbox) through a sender per kind of
destination, retries, signs webhooks, and the admins' view of the queue (DESIGN §3)."""
