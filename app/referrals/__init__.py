"""Referrals: FHIR ServiceRequests received from clinical record systems."""
