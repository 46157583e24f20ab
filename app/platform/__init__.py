"""The platform's side of a case: signed inbound events (webhooks) and the reconciliation poll,
both turned into canonical case events through the one domain path."""
