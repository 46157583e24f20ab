"""The OpenAPI document: generated from the routes, then completed here for integrators.

FastAPI writes what the route decorators say. :func:`install` completes it, once, for everything
the app serves (``/openapi.json``, Swagger UI, ReDoc) and for the committed copy
(``spbridge openapi`` → ``openapi/openapi.json``; a test fails when the two drift):

- who may call each operation: the bearer and OAuth2 security schemes, and each operation's
  roles and scope, read from its ``require(Operation.…)`` rule (app.security.policy);
- errors as the app really sends them: OperationOutcome (``application/fhir+json``) under
  ``/fhir`` and problem details (``application/problem+json``) elsewhere, in place of FastAPI's
  default validation error (under ``/fhir`` a bad parameter is a 400, not a 422); the statuses
  that every operation of a kind can answer (401 and 403 with a key, 400 for a NUL character in
  the URL, 413, 415 and 422 for bodies outside ``/fhir``);
- an example for every request body and every response: those given at the route or on the
  schema (its first ``examples`` entry) are kept; errors get one rendered by the app's own error
  renderer; FHIR resources get the matching file in ``fhir/examples/``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse

from app.errors import (
    _DESCRIPTIONS,
    FHIR_MEDIA_TYPE,
    PROBLEM_MEDIA_TYPE,
    AppError,
    Issue,
    NotFound,
    is_fhir_path,
    operation_outcome,
    problem_details,
)
from app.limits import NOT_JSON
from app.openapi_examples import MEDIA_EXAMPLES, RESPONSE_EXAMPLES

log = logging.getLogger("spbridge")

REF = "#/components/schemas/"
OPERATION_OUTCOME = REF + "OperationOutcomeDoc"
PROBLEM_DETAILS = REF + "ProblemDetailsDoc"
# FastAPI's own 422 body, which this app never sends (its handler renders validation errors).
_FASTAPI_VALIDATION = REF + "HTTPValidationError"
_FASTAPI_COMPONENTS = ("HTTPValidationError", "ValidationError")
_METHODS = ("get", "put", "post", "patch", "delete")

SCOPE_DESCRIPTIONS = {
    "referrals:write": "make and cancel referrals",
    "referrals:read": "read referrals, their Tasks and journeys",
    "cases:read": "read cases",
    "cases:write": "record case events",
    "worklist:read": "read the worklist",
    "services:read": "read the social prescribing services",
    "subscriptions:write": "manage your webhook subscriptions",
    "reports:read": "read the evaluation reports",
    "audit:read": "read the audit trail",
    "admin": "administration: clients, services, routes, deliveries",
}

# One example error per status, in words the app really uses (never patient data).
_EXAMPLE_ISSUES: dict[int, Issue] = {
    400: Issue("structure", "The request body is not valid JSON"),
    401: Issue("login", "Send an API key as 'Authorization: Bearer <key>'"),
    403: Issue("forbidden", "The role 'reporting' may not do 'referral.read'"),
    404: Issue("not-found", "No such resource"),
    405: Issue("not-supported", "This endpoint does not support that method"),
    406: Issue(
        "not-supported",
        "Accept names no format this server serves: only FHIR JSON (application/fhir+json, "
        "application/json)",
    ),
    409: Issue("conflict", "The case is closed: it accepts no further events"),
    410: Issue(
        "deleted",
        "The referral belongs to a case closed longer ago than the retention period; its patient "
        "data has been removed",
    ),
    412: Issue("conflict", "If-None-Exist matches more than one referral"),
    413: Issue("too-long", "The request body is larger than 1048576 bytes"),
    415: Issue(
        "not-supported",
        "Send FHIR resources as application/fhir+json (application/json is also accepted)",
    ),
    428: Issue(
        "required",
        "If-Match is required: the version you are changing, as the ETag of your last read "
        '(now W/"1")',
    ),
    429: Issue("throttled", "Too many requests; try again after Retry-After seconds"),
    503: Issue(
        "transient",
        "The database did not answer in time; send the request again after Retry-After seconds",
    ),
}
_EXAMPLE_422 = {
    True: Issue(
        "required",
        "subject must carry an NHS number (identifier system https://fhir.nhs.uk/Id/nhs-number), "
        "on the reference's identifier or on the bundled or contained Patient",
        "ServiceRequest.subject",
    ),
    False: Issue("value", "url: Field required", "url"),
}
_TITLES = {
    400: "Bad request",
    401: "Authentication required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    410: "Gone",
    412: "Precondition failed",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Unprocessable entity",
    428: "Precondition required",
    429: "Too many requests",
    503: "Service Unavailable",
}
_MORE_DESCRIPTIONS = {405: "Method not allowed", 500: "Internal error"}


def error_example(status: int, fhir: bool) -> dict[str, Any]:
    """The body the app sends for an error of ``status``, rendered by its own renderer."""
    issue = _EXAMPLE_422[fhir] if status == 422 else _EXAMPLE_ISSUES.get(status)
    if status == 415 and not fhir:
        issue = Issue("not-supported", NOT_JSON)
    if issue is None:
        issue = Issue(AppError.issue_code, _TITLES.get(status, "Error"))
    if fhir:
        return operation_outcome([issue], status)
    return problem_details(status, _TITLES.get(status, "Error"), [issue])


# --- FHIR examples: files in fhir/examples/ -----------------------------------------------------

# By operation id first (a Bundle can be a searchset, a collection or a transaction-response),
# then by the resource type the response declares.
_FHIR_EXAMPLES_BY_OPERATION = {
    "postTransactionBundle": "Bundle-transaction-response",
    "readJourney": "Bundle-journey",
    "processMessage": "OperationOutcome-bars-accepted",
    "readSubscriptionTopic": "Basic-referral-task-changed",
    "createFhirSubscription": "Subscription-as-held",
    "readFhirSubscription": "Subscription-as-held",
    "searchFhirSubscription": "Bundle-subscription-search",
    "deleteFhirSubscription": "OperationOutcome-subscription-deleted",
    "fhirSubscriptionStatus": "Bundle-subscription-status",
    "fhirSubscriptionEvents": "Bundle-subscription-notification",
}
_FHIR_EXAMPLES_BY_TYPE = {
    "ServiceRequest": "ServiceRequest-referral-as-held",
    "Patient": "Patient-referral",
    "Task": "Task-referral-in-progress",
    "Appointment": "Appointment-booked",
    "Observation": "Observation-swemwbs",
    "QuestionnaireResponse": "QuestionnaireResponse-swemwbs",
    "Bundle": "Bundle-searchset",
    "AuditEvent": "AuditEvent-read",
    "HealthcareService": "HealthcareService-sandbox",
    "Organization": "Organization-sandbox-service",
}
_EXAMPLE_BASE = "http://127.0.0.1:8000/fhir"  # the sandbox, where the examples were recorded
_REFERRAL_ID = "c7bd72e0-c4ee-4438-8b55-663f8b45dda9"  # the referral of the recorded examples
_FHIR_REQUEST_EXAMPLES_BY_OPERATION = {
    "postTransactionBundle": "Bundle-transaction-referral",
    "updateServiceRequest": "ServiceRequest-cancellation",
}


def fhir_example(name: str) -> Any:
    from app.fhir.http import example

    return copy.deepcopy(example(name))


def _capability_statement() -> Any:
    from app.metadata.statement import capability_statement

    return capability_statement(_EXAMPLE_BASE, _EXAMPLE_BASE.removesuffix("/fhir"))


def _declared_resource_type(schema: dict[str, Any]) -> str | None:
    enum = schema.get("properties", {}).get("resourceType", {}).get("enum") or [None]
    found: str | None = enum[0]
    return found


def _searchset(resource: dict[str, Any]) -> dict[str, Any]:
    """A one-match searchset Bundle as the app answers a search that finds ``resource``."""
    url = f"{_EXAMPLE_BASE}/{resource['resourceType']}/{resource['id']}"
    parameter = {"Task": "focus", "AuditEvent": "entity"}.get(resource["resourceType"], "based-on")
    query = f"{parameter}=ServiceRequest/{_REFERRAL_ID}"
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 1,
        "link": [
            {"relation": "self", "url": f"{_EXAMPLE_BASE}/{resource['resourceType']}?{query}"}
        ],
        "entry": [{"fullUrl": url, "resource": resource}],
    }


def _history(resource: dict[str, Any]) -> dict[str, Any]:
    """A one-version history Bundle as the app answers _history of ``resource``."""
    url = f"{_EXAMPLE_BASE}/{resource['resourceType']}/{resource['id']}"
    return {
        "resourceType": "Bundle",
        "type": "history",
        "total": 1,
        "link": [{"relation": "self", "url": f"{url}/_history"}],
        "entry": [
            {
                "fullUrl": url,
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]},
                "response": {
                    "status": "201 Created",
                    "etag": 'W/"1"',
                    "lastModified": resource["meta"]["lastUpdated"],
                },
            }
        ],
    }


def _fhir_response_example(operation_id: str, schema: dict[str, Any]) -> Any:
    if operation_id == "readCapabilityStatement":
        return _capability_statement()
    history = operation_id.removeprefix("history")
    if history != operation_id and history in _FHIR_EXAMPLES_BY_TYPE:
        return _history(fhir_example(_FHIR_EXAMPLES_BY_TYPE[history]))
    searched = operation_id.removeprefix("postSearch").removeprefix("search")
    if searched != operation_id and searched in _FHIR_EXAMPLES_BY_TYPE.keys() - {"ServiceRequest"}:
        return _searchset(fhir_example(_FHIR_EXAMPLES_BY_TYPE[searched]))
    name = _FHIR_EXAMPLES_BY_OPERATION.get(operation_id) or _FHIR_EXAMPLES_BY_TYPE.get(
        _declared_resource_type(schema) or ""
    )
    return fhir_example(name) if name else None


# --- completing the document ----------------------------------------------------------------


def _rules(application: FastAPI) -> dict[tuple[str, str], Any]:
    from app.security.policy import PolicyError, route_rules

    try:
        return route_rules(application)
    except PolicyError as error:
        # tests/test_authorisation.py fails on this; the document must still be served.
        log.warning("openapi: routes without an authorisation rule", extra={"problems": str(error)})
        return {}


def _has_example(media: dict[str, Any]) -> bool:
    return "example" in media or "examples" in media


def _schema_example(spec: dict[str, Any], schema: dict[str, Any]) -> Any:
    """The first example of a schema, of the component it refers to (or, failing that, the
    component's recorded example in app.openapi_examples), of an array's items, or of the first
    branch of a union that has one."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix(REF)
        component = spec["components"]["schemas"].get(name, {})
        found = _own_example(component)
        if found is not None:
            return restore_nulls(spec, component, found)
        return copy.deepcopy(RESPONSE_EXAMPLES.get(name))
    found = _own_example(schema)
    if found is None and schema.get("type") == "array" and "items" in schema:
        item = _schema_example(spec, schema["items"])
        found = None if item is None else [item]
    for branch in schema.get("anyOf", []) + schema.get("oneOf", []):
        if found is None and branch.get("type") != "null":
            found = _schema_example(spec, branch)
    return found


def _nullable(spec: dict[str, Any], schema: dict[str, Any]) -> bool:
    schema = _resolved(spec, schema)
    branches = schema.get("anyOf", []) + schema.get("oneOf", [])
    return schema.get("type") == "null" or any(b.get("type") == "null" for b in branches)


def _resolved(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"].get(schema["$ref"].removeprefix(REF), {})
    return schema


def restore_nulls(spec: dict[str, Any], schema: dict[str, Any], value: Any) -> Any:
    """``value`` with the nulls FastAPI dropped put back: it writes the document without None
    values (examples included), so a required property that may be null and is missing from an
    example was null."""
    schema = _resolved(spec, schema)
    if isinstance(value, list) and "items" in schema:
        return [restore_nulls(spec, schema["items"], item) for item in value]
    if not isinstance(value, dict):
        return value
    for branch in schema.get("anyOf", []) + schema.get("oneOf", []) + schema.get("allOf", []):
        if branch.get("type") != "null":
            value = restore_nulls(spec, branch, value)
    properties = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in value and name in properties and _nullable(spec, properties[name]):
            value[name] = None
    for name, item in value.items():
        if name in properties:
            value[name] = restore_nulls(spec, properties[name], item)
    return value


def _own_example(schema: dict[str, Any]) -> Any:
    examples = schema.get("examples")
    if isinstance(examples, list) and examples:
        return copy.deepcopy(examples[0])
    return copy.deepcopy(schema["example"]) if "example" in schema else None


def _error_content(response: dict[str, Any], status: int, fhir: bool) -> dict[str, Any] | None:
    """The content an error response really has, or None to leave it as declared (the OAuth2
    token endpoint's RFC 6749 errors, the journey page's HTML)."""
    content: dict[str, Any] = response.get("content", {})
    if set(content) - {"application/json", PROBLEM_MEDIA_TYPE, FHIR_MEDIA_TYPE}:
        return None
    refs = {
        media["schema"]["$ref"] for media in content.values() if "$ref" in media.get("schema", {})
    }
    examples = [media["example"] for media in content.values() if "example" in media]
    ref = OPERATION_OUTCOME if fhir else PROBLEM_DETAILS
    own = refs - {ref, _FASTAPI_VALIDATION}
    if len(own) == 1 and not fhir and next(iter(own)).endswith("Doc"):
        ref = own.pop()  # problem details with members of its own (e.g. TransitionRefusedDoc)
    elif own:
        return None  # a body of its own kind (e.g. OAuth2 errors): keep it
    example = examples[0] if examples else error_example(status, fhir)
    return {
        FHIR_MEDIA_TYPE if fhir else PROBLEM_MEDIA_TYPE: {
            "schema": {"$ref": ref},
            "example": example,
        }
    }


def _ensure(responses: dict[str, Any], status: int) -> None:
    if str(status) not in responses:
        responses[str(status)] = {
            "description": _DESCRIPTIONS.get(status) or _MORE_DESCRIPTIONS[status]
        }


def _complete_errors(operation: dict[str, Any], path: str, secured: bool, fhir: bool) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    default_validation = responses.get("422", {}).get("content", {}).get("application/json", {})
    if default_validation.get("schema", {}).get("$ref") == _FASTAPI_VALIDATION and fhir:
        # Under /fhir the app answers a bad parameter with 400 and an OperationOutcome.
        del responses["422"]
        _ensure(responses, 400)
    if secured:
        _ensure(responses, 401)
        _ensure(responses, 403)
    # A NUL character in the URL is a 400 everywhere but on the journey page, which answers
    # every input with a page of its own (app.limits.has_nul).
    if (operation.get("parameters") or operation.get("requestBody")) and not path.startswith(
        "/journey/"
    ):
        _ensure(responses, 400)
    if operation.get("requestBody") and not fhir:
        # app.limits: size, nesting and NUL characters of every body outside /fhir, and its
        # media type (JSON) except on the platforms' webhooks, which read their own.
        for status in (400, 413, 422):
            _ensure(responses, status)
        if path.startswith("/api/v1/") and not path.startswith("/api/v1/adapters/"):
            _ensure(responses, 415)
    for code, response in responses.items():
        if not code.isdigit() or int(code) < 400:
            continue
        content = _error_content(response, int(code), fhir)
        if content is not None:
            response["content"] = content


def _complete_examples(spec: dict[str, Any], operation: dict[str, Any], fhir: bool) -> None:
    operation_id = operation.get("operationId", "")
    parts = [("request", operation.get("requestBody", {}))]
    parts += list(operation.get("responses", {}).items())
    for key, part in parts:
        for media_type, media in part.get("content", {}).items():
            if _has_example(media):
                continue
            schema = media.get("schema", {})
            example = MEDIA_EXAMPLES.get((operation_id, key, media_type))
            if example is None and media_type == FHIR_MEDIA_TYPE and key != "request":
                example = _fhir_response_example(operation_id, schema)
            if example is None and fhir and key == "request":
                name = _FHIR_REQUEST_EXAMPLES_BY_OPERATION.get(operation_id)
                example = fhir_example(name) if name else None
            if example is None and operation_id.startswith("postSearch"):
                example = {"_count": 10, "_sort": "-_lastUpdated"}  # a search's form body
            if example is None:
                example = _schema_example(spec, schema)
            if example is not None:
                media["example"] = example


def _roles_sentence(rule: Any) -> str:
    from app.security.roles import PERMISSIONS, SCOPE_OF

    roles = ", ".join(sorted(PERMISSIONS[rule]))
    return f"Who may call: {roles} (OAuth2 scope `{SCOPE_OF[rule]}`)."


def _complete_security(operation: dict[str, Any], rule: Any) -> bool:
    """Security requirement and who may call; whether the operation needs a key."""
    from app.security.policy import Public
    from app.security.roles import SCOPE_OF, Operation

    if isinstance(rule, Operation):
        operation["security"] = [{"bearerAuth": []}, {"oauth2": [SCOPE_OF[rule]]}]
        sentence = _roles_sentence(rule)
        description = operation.get("description", "")
        if sentence not in description:
            operation["description"] = f"{description}\n\n{sentence}".strip()
        return True
    if isinstance(rule, Public):
        operation["security"] = []
    return False


def _security_schemes() -> dict[str, Any]:
    from app.security.roles import SCOPE_OF

    scopes = {
        scope: SCOPE_DESCRIPTIONS.get(scope, scope) for scope in sorted(set(SCOPE_OF.values()))
    }
    return {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "An API key (`spb_…`, from an admin: POST /api/v1/clients) or an access token "
                "from POST /oauth2/token, as `Authorization: Bearer <key>`."
            ),
        },
        "oauth2": {
            "type": "oauth2",
            "description": "OAuth2 client credentials; the scopes can only narrow the role.",
            "flows": {"clientCredentials": {"tokenUrl": "/oauth2/token", "scopes": scopes}},
        },
    }


def complete(spec: dict[str, Any], application: FastAPI) -> dict[str, Any]:
    """``spec`` (FastAPI's document of ``application``) completed as the module docstring says."""
    spec = copy.deepcopy(spec)
    rules = _rules(application)
    spec.setdefault("components", {}).setdefault("securitySchemes", {}).update(_security_schemes())
    for path, item in spec.get("paths", {}).items():
        fhir = is_fhir_path(path)
        for method in _METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            secured = _complete_security(operation, rules.get((method.upper(), path)))
            _complete_errors(operation, path, secured, fhir)
            _complete_examples(spec, operation, fhir)
    text = repr(spec["paths"])
    for name in _FASTAPI_COMPONENTS:
        if REF + name not in text:
            spec["components"].get("schemas", {}).pop(name, None)
    return spec


def install(application: FastAPI) -> None:
    """Serve the completed document (made once, on first request) as the app's OpenAPI."""
    generate: Callable[[], dict[str, Any]] = application.openapi
    made: dict[str, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        if "document" not in made:
            made["document"] = complete(generate(), application)
        application.openapi_schema = made["document"]
        return made["document"]

    application.openapi = openapi  # type: ignore[method-assign]


# --- the documentation pages ----------------------------------------------------------------

# Swagger UI's and ReDoc's scripts, style sheet and icon, as the fastapi-offline package ships
# them (kept up to date there), served from the bridge: the pages work where a trust's network
# blocks the CDNs FastAPI would load them from.
DOCS_ASSETS = "/docs/assets"
_ASSET_FOLDER = Path(fastapi_offline.__file__).resolve().parent / "static"
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}


def install_docs(application: FastAPI) -> None:
    """Swagger UI at /docs and ReDoc at /redoc, with every file they need served from here."""
    title = application.title
    openapi_url = application.openapi_url or "/openapi.json"
    redirect_url = application.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"
    favicon = f"{DOCS_ASSETS}/favicon.png"

    @application.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            oauth2_redirect_url=redirect_url,
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=favicon,
            swagger_ui_parameters=application.swagger_ui_parameters,
        )

    @application.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @application.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=favicon,
            with_google_fonts=False,
        )

    @application.get(DOCS_ASSETS + "/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> FileResponse:
        media_type = _ASSETS.get(name)
        if media_type is None:
            raise NotFound("No such file of the documentation pages")
        return FileResponse(
            _ASSET_FOLDER / name,
            media_type=media_type,
            headers={"Cache-Control": "public, max-age=86400"},
        )
