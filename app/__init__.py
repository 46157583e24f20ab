"""Social Prescribing Referral Bridge."""

__version__ = "0.1.0"
