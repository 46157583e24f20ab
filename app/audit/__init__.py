"""The audit trail: one append-only record of every read and write of patient data (DESIGN §8)."""
