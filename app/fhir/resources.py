"""The one place that picks the FHIR model set: R4B (R4-compatible).

Plain ``fhir.resources`` is R5.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.conceptmap import ConceptMap
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.resource import Resource
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.task import Task

__all__ = [
    "Bundle",
    "CapabilityStatement",
    "ConceptMap",
    "OperationOutcome",
    "Resource",
    "ServiceRequest",
    "Task",
    "model_class",
]


def model_class(resource_type: str) -> Any:
    """The R4B model class for a resource type name; KeyError when there is none."""
    return get_fhir_model_class(resource_type)
