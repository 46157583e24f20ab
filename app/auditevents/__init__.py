"""The audit trail read back: GET /fhir/AuditEvent for admins (app.audit writes the records)."""
