"""The application: create_app, the lifespan, error rendering."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import app as package
from app.audit.trail import AuditMiddleware
from app.auditevents.router import router as audit_router
from app.bars.router import router as bars_router
from app.caches import PRINCIPALS
from app.cases.router import api_router as cases_router
from app.cases.router import router as task_router
from app.clients.router import router as clients_router
from app.config import ConfigurationError, Settings, get_settings, require_public_base_url
from app.db import Database
from app.delivery.router import router as deliveries_router
from app.directory.router import fhir_router as directory_fhir_router
from app.directory.router import router as services_router
from app.directory.router import routes_router
from app.errors import (
    FHIR_MEDIA_TYPE,
    PROBLEM_MEDIA_TYPE,
    UNAVAILABLE_DESCRIPTION,
    AppError,
    BadRequest,
    BusinessRuleViolation,
    ErrorBoundary,
    Issue,
    MethodNotAllowed,
    NotFound,
    answer_to_failure,
    error_response,
    is_fhir_path,
    validation_location,
    validation_message,
)
from app.fhir.parsing import prepare_r4_validation
from app.fhirsubscriptions.router import router as fhir_subscriptions_router
from app.imports.router import router as imports_router
from app.journey.router import router as journey_router
from app.journey.service import redact_tokens_in_access_logs
from app.keys import KeyStore
from app.limits import install as install_limits
from app.limits import json_syntax_error
from app.logs import AccessLogMiddleware
from app.metadata.router import router as metadata_router
from app.openapi import install as install_openapi
from app.openapi import install_docs
from app.operations.metrics import RequestMetrics
from app.operations.router import router as operations_router
from app.outbound import outbound_client
from app.platform.router import router as platform_router
from app.referrals.router import router as referrals_router
from app.reports.router import router as reports_router
from app.reports.version import check_at_startup as check_report_model
from app.requestids import RequestIdMiddleware
from app.sandbox.router import router as sandbox_router
from app.security.auth import PrincipalCache, hash_key
from app.security.oauth import router as oauth_router
from app.webhooks.router import router as subscriptions_router
from app.worker import Background
from app.worklist.router import router as worklist_router

log = logging.getLogger("spbridge")


def _is_fhir(request: Request) -> bool:
    return is_fhir_path(request.url.path)


def render_error(request: Request, error: AppError) -> Response:
    return error_response(request.url.path, error)


def _validation_error(request: Request, exc: RequestValidationError) -> AppError:
    syntax = _json_syntax(exc)
    if syntax is not None:
        return syntax
    issues = []
    body = exc.body if isinstance(exc.body, dict) else {}
    for error in exc.errors()[:20]:
        location = [str(part) for part in validation_location(error)]
        if len(location) > 1 and location[0] == "body" and body.get("type") == location[1]:
            # A tagged union puts the tag in the path; the field is what the client sent.
            del location[1]
        where = ".".join(location[1:]) if len(location) > 1 else ".".join(location)
        message = validation_message(error)
        issues.append(
            Issue("invalid" if _is_fhir(request) else "value", f"{where}: {message}", where)
        )
    if not issues:
        issues.append(Issue("invalid", "The request is not valid"))
    if _is_fhir(request):
        return BadRequest(issues[0].diagnostics, issues=issues)
    return BusinessRuleViolation(issues[0].diagnostics, issues=issues)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "unknown status"


def _json_syntax(exc: RequestValidationError) -> AppError | None:
    """A body that is not JSON at all: 400 with where it breaks, not a field's 422."""
    for error in exc.errors():
        location = error.get("loc", ())
        if error.get("type") == "json_invalid" and isinstance(exc.body, str | bytes):
            position = location[1] if len(location) > 1 and isinstance(location[1], int) else 0
            reason = str((error.get("ctx") or {}).get("error", ""))
            return json_syntax_error(exc.body, position, reason)
    return None


def _install_error_handlers(application: FastAPI) -> None:
    async def on_app_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AppError)
        return render_error(request, exc)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return render_error(request, _validation_error(request, exc))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        error: AppError
        if exc.status_code == 404:
            error = NotFound("No such endpoint")
        elif exc.status_code == 405:
            error = MethodNotAllowed("This endpoint does not support that method")
        else:
            # The framework's own refusals: said in our words (its detail could carry input).
            error = BadRequest(f"The request was refused: {_phrase(exc.status_code)}")
            error.status = exc.status_code  # type: ignore[misc]
        return render_error(request, error)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # Only for an error raised outside the ErrorBoundary (in a middleware), or after the
        # response started. Past the request id middleware by now: its headers are added here.
        response = render_error(request, answer_to_failure(request.scope, exc))
        for header, key in (("X-Request-ID", "request_id"), ("X-Correlation-ID", "correlation_id")):
            value = getattr(request.state, key, None)
            if isinstance(value, str):
                response.headers[header] = value
        return response

    application.add_exception_handler(AppError, on_app_error)
    application.add_exception_handler(RequestValidationError, on_validation_error)
    application.add_exception_handler(StarletteHTTPException, on_http_error)
    application.add_exception_handler(Exception, on_unexpected)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[None]:
        try:
            require_public_base_url(settings)
        except ConfigurationError as refused:
            log.critical(str(refused))  # one line, before the server's own report of the failure
            raise
        redact_tokens_in_access_logs()
        # The R4 schema is loaded and compiled on first use (about a second): here, not in the
        # first referral's request.
        prepare_r4_validation()
        database = Database.from_settings(settings)
        # The app's principal cache joins the database's, so a change to a client made through
        # any of its sessions empties it on commit (app.caches.forget_on_commit).
        database.caches[PRINCIPALS] = application.state.principals
        await database.follow_changes()  # and other processes' changes, on PostgreSQL
        http = outbound_client(settings)
        application.state.database = database
        application.state.http = http
        # A WARNING when the report read model must be rebuilt (it never stops the start).
        await check_report_model(database)
        background = None
        if settings.run_dispatcher:
            background = Background(database, settings, http)
            application.state.dispatcher = background.dispatcher
            background.start()
        try:
            yield
        finally:
            if background is not None:
                await background.stop()
            await http.aclose()
            await database.dispose()

    application = FastAPI(
        title="Social Prescribing Referral Bridge",
        version=package.__version__,
        description=(
            "Referrals from clinical record systems as FHIR R4 ServiceRequests, turned into social "
            "prescribing cases, with the patient's journey sent back. FHIR under /fhir; "
            "everything else under /api/v1. Authenticate with 'Authorization: Bearer <API key>', "
            "or with a short-lived access token from POST /oauth2/token (client credentials: "
            "client_secret_basic or private_key_jwt)."
        ),
        lifespan=lifespan,
        # Swagger UI and ReDoc are served by install_docs, with their scripts from here.
        docs_url=None,
        redoc_url=None,
    )
    application.state.settings = settings
    application.state.keys = KeyStore()
    application.state.principals = PrincipalCache(settings.principal_cache_seconds)
    admin_key = settings.admin_api_key.get_secret_value() if settings.admin_api_key else None
    application.state.admin_key_hash = hash_key(admin_key) if admin_key else None

    # Outermost last: request ids, the access log (which also feeds the request metrics), then
    # CORS, rate and body limits (so 429s and 413s are logged and counted too), then the audit
    # trail (a request a limit refused never reached patient data), then the boundary that
    # answers errors no handler took (500, or 503 when the database is unavailable), so those
    # answers pass through all of the above like any other.
    application.add_middleware(ErrorBoundary)
    application.add_middleware(AuditMiddleware)
    install_limits(application, settings)
    application.state.request_metrics = RequestMetrics()
    application.add_middleware(
        AccessLogMiddleware, observers=[application.state.request_metrics.observe]
    )
    application.add_middleware(RequestIdMiddleware)
    _install_error_handlers(application)
    for router in (
        referrals_router,
        task_router,
        cases_router,
        worklist_router,
        journey_router,
        metadata_router,
        clients_router,
        oauth_router,
        services_router,
        routes_router,
        directory_fhir_router,
        subscriptions_router,
        deliveries_router,
        platform_router,
        reports_router,
        imports_router,
        operations_router,
        audit_router,
        sandbox_router,
        bars_router,
        fhir_subscriptions_router,
    ):
        application.include_router(router)

    _document_common_refusals(application)
    install_openapi(application)  # examples, errors and security as integrators need them
    install_docs(application)  # /docs and /redoc, working where a CDN is blocked
    return application


# Operations that never touch the database, so never answer 503 for it.
_NO_DATABASE = frozenset({"/healthz", "/metrics"})


def _document_common_refusals(application: FastAPI) -> None:
    """Every operation but the liveness probe can answer 429 (app.limits), and every one that
    touches the database 503 when it is unavailable (app.errors.ErrorBoundary): say so in each."""
    generate = application.openapi

    def openapi() -> dict[str, Any]:
        if application.openapi_schema is not None:
            return application.openapi_schema
        schema = generate()
        retry_after = {
            "Retry-After": {
                "description": "Seconds to wait before trying again",
                "schema": {"type": "integer"},
            }
        }
        for path, operations in schema.get("paths", {}).items():
            if path == "/healthz":
                continue
            fhir = is_fhir_path(path)
            body = (
                {FHIR_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/OperationOutcomeDoc"}}}
                if fhir
                else {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/ProblemDetailsDoc"}
                    },
                    PROBLEM_MEDIA_TYPE: {},
                }
            )
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                responses["429"] = {
                    "description": "Too many requests: wait for Retry-After seconds",
                    "headers": retry_after,
                    "content": body,
                }
                if path not in _NO_DATABASE:
                    responses.setdefault(
                        "503",
                        {
                            "description": UNAVAILABLE_DESCRIPTION,
                            "headers": retry_after,
                            "content": body,
                        },
                    )
        application.openapi_schema = schema
        return schema

    application.openapi = openapi  # type: ignore[method-assign]


def openapi_document() -> dict[str, Any]:
    """The API description as committed in openapi/openapi.json (`spbridge openapi`)."""
    # Fixed settings: the document must not depend on the machine that generates it.
    spec: dict[str, Any] = create_app(
        Settings(database_url="sqlite+aiosqlite:///:memory:")
    ).openapi()
    return spec
