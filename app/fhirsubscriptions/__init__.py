"""FHIR Subscriptions (the Subscriptions R5 Backport IG on R4): the topic "referral Task
changed", Subscription create, read, search and delete, ``$status`` and ``$events``. The
notifications are queued by app.outbox.topics and sent by the dispatcher. Not our own webhook
subscriptions (app.webhooks)."""
