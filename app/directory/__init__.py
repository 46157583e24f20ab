"""The social prescribing services that referrals are sent to."""
