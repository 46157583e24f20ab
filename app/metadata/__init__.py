"""What the FHIR server supports: the CapabilityStatement."""
