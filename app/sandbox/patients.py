"""Synthetic patients for the sandbox, and a referral about one of them an integrator can send.

NHS numbers come from the 999 range NHS England keeps for testing: they pass the modulus-11 check
(DESIGN §6) but belong to nobody. Names, dates, postcodes and telephone numbers are invented (the
telephone numbers are in Ofcom's range for drama, 07700 900000-900999).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_WEIGHTS = range(10, 1, -1)


def synthetic_nhs_number(serial: int) -> str | None:
    """The test-range NHS number 999 + ``serial`` (six digits) + its check digit; None when the
    check digit would be 10 (no valid number has those first nine digits)."""
    first_nine = f"999{serial:06d}"
    total = sum(int(digit) * weight for digit, weight in zip(first_nine, _WEIGHTS, strict=True))
    check = 11 - total % 11
    if check == 11:
        check = 0
    if check == 10:
        return None
    return f"{first_nine}{check}"


@dataclass(frozen=True)
class SyntheticPatient:
    nhs_number: str
    given: str
    family: str
    gender: str
    birth_date: str
    postcode: str
    phone: str


_PEOPLE = (
    ("Sam", "Sandbox", "unknown", "1990-01-01", "WA7 1AA"),
    ("Alex", "Testperson", "female", "1984-06-12", "WA8 7QE"),
    ("Jordan", "Example", "male", "1971-11-30", "WA7 2GW"),
    ("Riley", "Synthetic", "female", "2001-03-08", "WA8 0RA"),
    ("Morgan", "Fictional", "male", "1958-09-21", "L24 1TX"),
    ("Casey", "Madeup", "other", "1996-12-02", "WA7 5HB"),
)


def _patients() -> tuple[SyntheticPatient, ...]:
    made: list[SyntheticPatient] = []
    serial = 1
    for index, (given, family, gender, birth_date, postcode) in enumerate(_PEOPLE):
        number = synthetic_nhs_number(serial)
        while number is None:
            serial += 1
            number = synthetic_nhs_number(serial)
        serial += 1
        phone = f"07700 900{100 + index:03d}"
        made.append(SyntheticPatient(number, given, family, gender, birth_date, postcode, phone))
    return tuple(made)


PATIENTS = _patients()


def patient_resource(patient: SyntheticPatient) -> dict[str, Any]:
    """The patient as a contained FHIR Patient (UK Core shaped, verified NHS number)."""
    return {
        "resourceType": "Patient",
        "id": "patient",
        "identifier": [
            {
                "extension": [
                    {
                        "url": "https://fhir.hl7.org.uk/StructureDefinition/"
                        "Extension-UKCore-NHSNumberVerificationStatus",
                        "valueCodeableConcept": {
                            "coding": [
                                {
                                    "system": "https://fhir.hl7.org.uk/CodeSystem/"
                                    "UKCore-NHSNumberVerificationStatusEngland",
                                    "code": "01",
                                    "display": "Number present and verified",
                                }
                            ]
                        },
                    }
                ],
                "system": "https://fhir.nhs.uk/Id/nhs-number",
                "value": patient.nhs_number,
            }
        ],
        "name": [{"use": "official", "family": patient.family, "given": [patient.given]}],
        "gender": patient.gender,
        "birthDate": patient.birth_date,
        "telecom": [{"system": "phone", "value": patient.phone, "use": "mobile"}],
        "address": [{"use": "home", "postalCode": patient.postcode}],
    }


def referral_resource(
    patient: SyntheticPatient,
    *,
    identifier: str,
    authored_on: str,
    requester: str,
    service: str,
) -> dict[str, Any]:
    """A referral to ``service`` about ``patient``, with the patient's consent, as a clinical
    record system would send it."""
    return {
        "resourceType": "ServiceRequest",
        "contained": [
            patient_resource(patient),
            {
                "resourceType": "Consent",
                "id": "consent",
                "status": "active",
                "scope": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                            "code": "patient-privacy",
                        }
                    ]
                },
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://loinc.org",
                                "code": "59284-0",
                                "display": "Patient Consent",
                            }
                        ]
                    }
                ],
                "patient": {"reference": "#patient"},
                "dateTime": authored_on,
                "provision": {"type": "permit"},
            },
        ],
        "identifier": [
            {"system": "https://sandbox.spbridge.example/Id/referral", "value": identifier}
        ],
        "status": "active",
        "intent": "order",
        "priority": "routine",
        "code": {
            "coding": [
                {
                    "system": "http://snomed.info/sct",
                    "code": "871731000000106",
                    "display": "Referral to social prescribing service",
                }
            ]
        },
        "subject": {
            "reference": "#patient",
            "identifier": {
                "system": "https://fhir.nhs.uk/Id/nhs-number",
                "value": patient.nhs_number,
            },
        },
        "authoredOn": authored_on,
        "requester": {
            "type": "Organization",
            "identifier": {
                "system": "https://fhir.nhs.uk/Id/ods-organization-code",
                "value": requester,
            },
            "display": "Sandbox crisis resolution team",
        },
        "performer": [{"reference": f"HealthcareService/{service}"}],
        "reasonCode": [
            {
                "coding": [
                    {
                        "system": "https://fhir.spbridge.org/CodeSystem/reason-for-referral",
                        "code": "finance-benefits-debt",
                        "display": "Finance, Benefits and Debt Advice",
                    }
                ]
            },
            {"text": "Loneliness"},
        ],
        "supportingInfo": [{"reference": "#consent"}],
        "note": [{"text": "Prefers a telephone call in the afternoon."}],
    }
