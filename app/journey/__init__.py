"""The patient journey page: short-lived signed links and the server-rendered timeline a clinician
opens from the clinical record."""
