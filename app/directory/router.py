from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response, status

from app.dependencies import AppSettings, OutboundHTTP, ReadSession, WriteSession
from app.directory import service
from app.directory.models import SocialPrescribingService
from app.directory.schemas import ClinicalRouteIn, ClinicalRouteOut, ServiceCreate, ServiceOut
from app.errors import api_error_responses, fhir_error_responses
from app.fhir.codes import ODS_CODE
from app.fhir.directory import healthcare_service_resource, organization_resource
from app.fhir.http import check_format, fhir_resource_response, read_response
from app.fhir.responses import FHIRResponse
from app.outbox.models import Destination
from app.security.auth import Principal, require
from app.security.roles import Operation

router = APIRouter(prefix="/api/v1/services", tags=["services"])


def _out(record: SocialPrescribingService) -> ServiceOut:
    return ServiceOut(
        id=record.id,
        name=record.name,
        organisation=record.organisation,
        adapter=record.adapter,
        first_contact_target_days=record.first_contact_target_days,
        support_window_days=record.support_window_days,
        created_at=record.created_at,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ServiceOut,
    summary="Register a social prescribing service",
    description="Admins register the services referrals can be sent to, with the adapter that "
    "holds their cases. An organisation's admin registers its own organisation's services only "
    "(another `organisation` is 403); the installation's admin (the bootstrap key), any.",
    operation_id="registerService",
    responses=api_error_responses(401, 403, 409, 422),
)
async def register_service(
    body: ServiceCreate,
    session: WriteSession,
    settings: AppSettings,
    admin: Annotated[Principal, Depends(require(Operation.SERVICE_MANAGE, writes=True))],
) -> ServiceOut:
    return _out(await service.register_service(session, admin, body, settings))


@router.get(
    "",
    response_model=list[ServiceOut],
    summary="List social prescribing services",
    description="The services a referral's performer may name: the directory, the same for "
    "every client whatever its organisation (without the adapters' settings).",
    operation_id="listServices",
    responses=api_error_responses(401),
)
async def list_services(
    session: ReadSession,
    _caller: Annotated[Principal, Depends(require(Operation.SERVICE_READ, writes=False))],
) -> list[ServiceOut]:
    return [_out(record) for record in await service.list_services(session)]


@router.get(
    "/{service_id}",
    response_model=ServiceOut,
    summary="Read a social prescribing service",
    description="One service by id.",
    operation_id="readService",
    responses=api_error_responses(401, 404),
)
async def read_service(
    service_id: str,
    session: ReadSession,
    _caller: Annotated[Principal, Depends(require(Operation.SERVICE_READ, writes=False))],
) -> ServiceOut:
    return _out(await service.get_service(session, service_id))


routes_router = APIRouter(prefix="/api/v1/clinical-routes", tags=["clinical routes"])
RouteManager = Annotated[Principal, Depends(require(Operation.ROUTE_MANAGE, writes=True))]
RouteReader = Annotated[Principal, Depends(require(Operation.ROUTE_MANAGE, writes=False))]
Organisation = Annotated[str, Path(pattern=ODS_CODE, description="ODS code of the referrer")]


def _route_out(route: Destination) -> ClinicalRouteOut:
    return ClinicalRouteOut(
        organisation=route.organisation or "",
        adapter=route.adapter,
        active=route.active,
        destination_id=route.id,
        updated_at=route.updated_at,
        write_mode=route.config.get("write_mode"),
        capabilities=route.config.get("capabilities"),
    )


@routes_router.put(
    "/{organisation}",
    response_model=ClinicalRouteOut,
    summary="Set where a referring organisation's updates go",
    description="Names the clinical adapter (e.g. `fhir_push` to the organisation's FHIR server) "
    "and its configuration, validated now, including the URL policy. Every later change to that "
    "organisation's referrals is sent there. For `fhir_push` the server's CapabilityStatement is "
    "read now (`capabilities` in the answer) to choose how to write (`write_mode` `auto`); an "
    "unreachable server is read at the first send. An organisation's admin sets its own "
    "organisation's route only (another is 403); the installation's admin (the bootstrap key), "
    "any.",
    operation_id="putClinicalRoute",
    responses=api_error_responses(401, 403, 422),
)
async def put_clinical_route(
    organisation: Organisation,
    body: ClinicalRouteIn,
    session: WriteSession,
    settings: AppSettings,
    admin: RouteManager,
    http: OutboundHTTP,
) -> ClinicalRouteOut:
    route = await service.put_clinical_route(session, admin, organisation, body, settings, http)
    return _route_out(route)


@routes_router.post(
    "/{organisation}/capabilities",
    response_model=ClinicalRouteOut,
    summary="Read the receiving server's capabilities again",
    description="Reads the CapabilityStatement of the route's FHIR server again (after an "
    "upgrade of that server, say) and keeps what it says; `write_mode` `auto` then follows it. "
    "A server that does not answer keeps what was read before, with `capabilities.unreachable` "
    "and the reason in `problem`. Another organisation's route is unknown (404).",
    operation_id="refreshClinicalRouteCapabilities",
    responses=api_error_responses(401, 403, 404, 422),
)
async def refresh_clinical_route_capabilities(
    organisation: Organisation, session: WriteSession, admin: RouteManager, http: OutboundHTTP
) -> ClinicalRouteOut:
    return _route_out(await service.refresh_clinical_route(session, admin, organisation, http))


@routes_router.get(
    "",
    response_model=list[ClinicalRouteOut],
    summary="List clinical routes",
    description="How the caller's organisation gets updates back (the installation's admin: "
    "every referring organisation's route).",
    operation_id="listClinicalRoutes",
    responses=api_error_responses(401, 403),
)
async def list_clinical_routes(session: ReadSession, admin: RouteReader) -> list[ClinicalRouteOut]:
    return [_route_out(route) for route in await service.list_clinical_routes(session, admin)]


@routes_router.get(
    "/{organisation}",
    response_model=ClinicalRouteOut,
    summary="Read a clinical route",
    description="Where one organisation's updates go (the configuration, which may hold "
    "credentials, is not shown). Another organisation's route is unknown (404).",
    operation_id="readClinicalRoute",
    responses=api_error_responses(401, 403, 404, 422),
)
async def read_clinical_route(
    organisation: Organisation, session: ReadSession, admin: RouteReader
) -> ClinicalRouteOut:
    return _route_out(await service.get_clinical_route(session, admin, organisation))


# --- /fhir: the service and its organisation, which the Task and its outputs point at ----------

fhir_router = APIRouter(
    prefix="/fhir", tags=["FHIR directory"], dependencies=[Depends(check_format)]
)
_VERSION_HEADERS = {
    "ETag": {"description": 'The version, as W/"n"', "schema": {"type": "string"}},
    "Last-Modified": {"description": "When it last changed", "schema": {"type": "string"}},
}


def read_responses(resource_type: str, description: str) -> dict[int | str, Any]:
    return {
        200: fhir_resource_response(description, resource_type, headers=_VERSION_HEADERS),
        304: {"description": "Not modified: If-None-Match named the current version"},
        **fhir_error_responses(401, 403, 404, 406),
    }


DirectoryReader = Annotated[Principal, Depends(require(Operation.SERVICE_READ, writes=False))]
FhirId = Annotated[str, Path(pattern=r"^[A-Za-z0-9\-.]{1,64}$")]


@fhir_router.get(
    "/HealthcareService/{service_id}",
    response_class=FHIRResponse,
    summary="Read a HealthcareService",
    description="A social prescribing service, as the Task's `owner` and an Appointment's "
    "participant name it: directory data, the same for every client (as `GET "
    "/api/v1/services/{id}`), with the Organization that runs it (`providedBy`).",
    operation_id="readHealthcareService",
    responses=read_responses("HealthcareService", "The HealthcareService"),
)
async def read_healthcare_service(
    service_id: FhirId, request: Request, session: ReadSession, _caller: DirectoryReader
) -> Response:
    record = await service.get_service(session, service_id)
    resource = healthcare_service_resource(
        record.id, record.name, record.organisation, record.created_at
    )
    return read_response(request, resource, 1, record.created_at)


@fhir_router.get(
    "/Organization/{organisation}",
    response_class=FHIRResponse,
    summary="Read an Organization",
    description="An organisation by its ODS code (the id), as an Observation's `performer`, a "
    "social prescription's `requester` and a HealthcareService's `providedBy` name it: one that "
    "runs a registered service or has a client here, or the caller's own (ODS codes are public "
    "directory data); any other is unknown (404).",
    operation_id="readOrganization",
    responses=read_responses("Organization", "The Organization"),
)
async def read_organization(
    organisation: Organisation, request: Request, session: ReadSession, caller: DirectoryReader
) -> Response:
    ods, since = await service.read_organisation(session, caller, organisation)
    return read_response(request, organization_resource(ods, since), 1, since)
