"""The transactional outbox (DESIGN §3): where changes are sent (destinations), the rows every
change writes in its own transaction (deliveries) and their attempts. app.delivery sends them."""
