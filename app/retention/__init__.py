"""Retention: the patient data of long-closed cases is removed, the counts reports need stay."""
