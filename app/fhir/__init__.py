"""Our FHIR code: R4B models, parsing, OperationOutcome, mapping to and from FHIR.

The FHIR artefacts themselves (CodeSystems, ConceptMaps, CapabilityStatement) live as data in
the top-level ``fhir/`` folder, which must never become a Python package.
"""
