"""The transactional outbox (DESIGN §3): where changes are sent (destinations, with their
adapter configuration), the rows every change writes in its own transaction (deliveries, with
the thin webhook payloads fixed then) and their attempts. app.delivery sends them."""
