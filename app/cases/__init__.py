"""Cases: the social prescribing side of a referral, its state machine and events."""
