"""Systems and codes used across the service."""

from __future__ import annotations

from pathlib import Path

CANONICAL_BASE = "https://fhir.spbridge.org"

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ODS_ORGANISATION_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
NHS_NUMBER_VERIFICATION_EXTENSION = (
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus"
)
SNOMED = "http://snomed.info/sct"
SNOMED_REFERRAL_TO_SOCIAL_PRESCRIBING = "871731000000106"

SERVICE_ID_SYSTEM = f"{CANONICAL_BASE}/Id/service"
REASON_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/reason-for-referral"
REASON_TEXT_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/reason-for-referral-text"
BUSINESS_STATUS_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/task-business-status"
TASK_CODE_SYSTEM = "http://hl7.org/fhir/CodeSystem/task-code"

# The data folder beside the packages (DESIGN §4). Installed wheels look in the working directory
# (beside an installed wheel, site-packages/fhir is fhir.resources' package, not this folder).
_REPO_DATA = Path(__file__).resolve().parents[2] / "fhir"
FHIR_DATA_DIR = _REPO_DATA if (_REPO_DATA / "examples").is_dir() else Path.cwd() / "fhir"

SNOMED_SWEMWBS_SCORE = "718466001"
OBSERVATION_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
APPOINTMENT_TYPE_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/appointment-type"
PRESCRIPTION_CATEGORY_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/prescription-category"
REJECTION_REASON_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/rejection-reason"
TASK_OUTPUT_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/task-output-type"
WELLBEING_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/wellbeing-measure"
SWEMWBS_QUESTIONNAIRE = f"{CANONICAL_BASE}/Questionnaire/swemwbs"
# The ids the advisor's or platform's system gave appointments and prescriptions.
APPOINTMENT_ID_SYSTEM = f"{CANONICAL_BASE}/Id/appointment"
PRESCRIPTION_ID_SYSTEM = f"{CANONICAL_BASE}/Id/social-prescription"

# An ODS organisation code as the API takes it (the bridge's check; ODS codes are 3-10 upper-case
# letters and digits).
ODS_CODE = r"^[A-Z0-9]{3,10}$"
# The bridge's own id of every resource it writes to a referrer's FHIR server (Task, Appointment,
# social prescription, SWEMWBS answers and score): the business identifier write-back matches on
# (conditional create and update), since that server gives the resource an id of its own.
RESOURCE_ID_SYSTEM = f"{CANONICAL_BASE}/Id/resource"
