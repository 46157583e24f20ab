"""Errors that carry their HTTP status, and how they are rendered.

Under ``/fhir`` an error is a FHIR OperationOutcome; everywhere else it is JSON problem details
(RFC 9457). Diagnostics are written by us, never echo input, and so never carry patient data.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.db import Unavailable, unavailability

log = logging.getLogger("spbridge")


@dataclass(frozen=True)
class Issue:
    """One problem found: a FHIR issue code, where (FHIRPath) and what, in plain words."""

    code: str
    diagnostics: str
    expression: str | None = None
    severity: str = "error"
    # Our code for it (fhir/CodeSystem-outcome-details.json) when it says more than the
    # error's status (the default for the status is used otherwise).
    details: str | None = None


class AppError(Exception):
    status: ClassVar[int] = 500
    issue_code: ClassVar[str] = "exception"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self,
        diagnostics: str,
        *,
        expression: str | None = None,
        issue_code: str | None = None,
        issues: Iterable[Issue] | None = None,
        headers: dict[str, str] | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        # Extra members of a problem-details body (RFC 9457 §3.2), for clients to act on.
        self.extensions = dict(extensions or {})
        extra = list(issues or [])
        if extra:
            self.issues = extra
        else:
            self.issues = [Issue(issue_code or self.issue_code, diagnostics, expression)]
        self.headers = headers or {}


class BadRequest(AppError):
    status = 400
    issue_code = "invalid"
    title = "Bad request"


class Unauthorized(AppError):
    status = 401
    issue_code = "login"
    title = "Authentication required"


class Forbidden(AppError):
    status = 403
    issue_code = "forbidden"
    title = "Forbidden"


class NotFound(AppError):
    status = 404
    issue_code = "not-found"
    title = "Not found"


class MethodNotAllowed(AppError):
    status = 405
    issue_code = "not-supported"
    title = "Method not allowed"


class Conflict(AppError):
    status = 409
    issue_code = "conflict"
    title = "Conflict"


class NotAcceptable(AppError):
    """406: the client accepts only formats we do not serve (we serve FHIR JSON only)."""

    status = 406
    issue_code = "not-supported"
    title = "Not acceptable"


class PreconditionFailed(AppError):
    status = 412
    issue_code = "conflict"
    title = "Precondition failed"


class PreconditionRequired(AppError):
    """428: the request must say which version it changes (If-Match)."""

    status = 428
    issue_code = "required"
    title = "Precondition required"


class PayloadTooLarge(AppError):
    status = 413
    issue_code = "too-long"
    title = "Payload too large"


class UnsupportedMediaType(AppError):
    status = 415
    issue_code = "not-supported"
    title = "Unsupported media type"


class Gone(AppError):
    """410: the resource existed, and its data has been removed under the retention policy."""

    status = 410
    issue_code = "deleted"
    title = "Gone"


def purged(what: str) -> Gone:
    """What a read of a purged referral's resources answers (retention)."""
    return Gone(
        f"{what} belongs to a case closed longer ago than the retention period; its patient data "
        "has been removed"
    )


class BusinessRuleViolation(AppError):
    status = 422
    issue_code = "business-rule"
    title = "Unprocessable entity"


# Seconds a client is asked to wait before trying again after a 503 (the database unavailable,
# or the audit record not written): long enough for a pool to drain or a failover to finish.
RETRY_AFTER_SECONDS = 5


class ServiceUnavailable(AppError):
    """503 with Retry-After: the request was refused because something it needs is unavailable
    for now. Send it again as it is after Retry-After seconds: it was rolled back (or, if the
    connection was lost as it committed, it was carried out, and a repeat finds it done: referrals
    by their identifier, case events by their idempotency key, platform messages by their id)."""

    status = 503
    issue_code = "transient"
    title = "Service Unavailable"

    def __init__(self, diagnostics: str, **kwargs: Any) -> None:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS), **(kwargs.pop("headers", None) or {})}
        super().__init__(diagnostics, headers=headers, **kwargs)


class DatabaseUnavailable(ServiceUnavailable):
    """503: the database did not answer in time (down, connection lost, pool exhausted, locked)."""

    def __init__(self, found: Unavailable) -> None:
        super().__init__(
            "The database did not answer in time; send the request again after Retry-After seconds"
        )
        self.found = found


# --- rendering -------------------------------------------------------------------------------

FHIR_MEDIA_TYPE = "application/fhir+json"
PROBLEM_MEDIA_TYPE = "application/problem+json"


def is_fhir_path(path: str) -> bool:
    return path == "/fhir" or path.startswith("/fhir/")


def error_response(path: str, error: AppError) -> Response:
    """``error`` as the client at ``path`` expects it: an OperationOutcome under /fhir, JSON
    problem details elsewhere."""
    if is_fhir_path(path):
        body = orjson.dumps(operation_outcome(error.issues, error.status))
        media_type = FHIR_MEDIA_TYPE
    else:
        body = orjson.dumps(
            problem_details(error.status, error.title, error.issues, error.extensions)
        )
        media_type = PROBLEM_MEDIA_TYPE
    return Response(body, status_code=error.status, media_type=media_type, headers=error.headers)


# Issue details (OperationOutcome.issue.details): our CodeSystem, and the NHS http-error-codes
# of BaRS where it has the code (the Receiver's, REC_…: the bridge receives the request).
OUTCOME_DETAILS_SYSTEM = "https://fhir.spbridge.org/CodeSystem/outcome-details"
NHS_HTTP_ERROR_CODES = "https://fhir.nhs.uk/CodeSystem/http-error-codes"
DETAILS_BY_STATUS: dict[int, str] = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    410: "gone",
    412: "precondition-failed",
    413: "too-large",
    415: "unsupported-media-type",
    422: "unprocessable",
    428: "precondition-required",
    429: "too-many-requests",
    500: "server-error",
    503: "unavailable",
}
BARS_BY_STATUS: dict[int, str] = {
    400: "REC_BAD_REQUEST",
    401: "REC_UNAUTHORIZED",
    403: "REC_FORBIDDEN",
    404: "REC_NOT_FOUND",
    409: "REC_CONFLICT",
    422: "REC_UNPROCESSABLE_ENTITY",
}


def issue_details(status: int | None, details: str | None) -> dict[str, Any] | None:
    code = details or (DETAILS_BY_STATUS.get(status) if status is not None else None)
    if code is None:
        return None
    coding = [{"system": OUTCOME_DETAILS_SYSTEM, "code": code}]
    if status in BARS_BY_STATUS:
        coding.append({"system": NHS_HTTP_ERROR_CODES, "code": BARS_BY_STATUS[status]})
    return {"coding": coding}


def operation_outcome(issues: Iterable[Issue], status: int | None = None) -> dict[str, Any]:
    out = []
    for issue in issues:
        entry: dict[str, Any] = {"severity": issue.severity, "code": issue.code}
        details = issue_details(status, issue.details)
        if details is not None:
            entry["details"] = details
        entry["diagnostics"] = issue.diagnostics
        if issue.expression:
            entry["expression"] = [issue.expression]
        out.append(entry)
    return {"resourceType": "OperationOutcome", "issue": out}


def problem_details(
    status: int, title: str, issues: list[Issue], extensions: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        **(extensions or {}),
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": issues[0].diagnostics if issues else title,
    }
    if len(issues) > 1 or (issues and issues[0].expression):
        body["errors"] = [
            {"code": i.code, "detail": i.diagnostics, "pointer": i.expression} for i in issues
        ]
    return body


# --- OpenAPI documentation of error bodies -----------------------------------------------------


class CodingDoc(BaseModel):
    system: str
    code: str


class CodeableConceptDoc(BaseModel):
    coding: list[CodingDoc]


class OperationOutcomeIssueDoc(BaseModel):
    severity: str = Field(examples=["error"])
    code: str = Field(examples=["business-rule"])
    details: CodeableConceptDoc | None = Field(
        default=None,
        examples=[
            {
                "coding": [
                    {"system": OUTCOME_DETAILS_SYSTEM, "code": "unprocessable"},
                    {"system": NHS_HTTP_ERROR_CODES, "code": "REC_UNPROCESSABLE_ENTITY"},
                ]
            }
        ],
    )
    diagnostics: str = Field(examples=["ServiceRequest.status must be 'active' for a new referral"])
    expression: list[str] | None = Field(default=None, examples=[["ServiceRequest.status"]])


class OperationOutcomeDoc(BaseModel):
    """A FHIR R4 OperationOutcome (only the elements this service fills)."""

    model_config = ConfigDict(title="OperationOutcome")
    resourceType: str = Field(default="OperationOutcome", examples=["OperationOutcome"])  # noqa: N815
    issue: list[OperationOutcomeIssueDoc]


class ProblemErrorDoc(BaseModel):
    code: str
    detail: str
    pointer: str | None = None


class ProblemDetailsDoc(BaseModel):
    """JSON problem details (RFC 9457)."""

    model_config = ConfigDict(title="ProblemDetails")
    type: str = "about:blank"
    title: str = Field(examples=["Forbidden"])
    status: int = Field(examples=[403])
    detail: str = Field(examples=["This operation needs the role admin"])
    errors: list[ProblemErrorDoc] | None = None


UNAVAILABLE_DESCRIPTION = (
    "Unavailable for now (the database did not answer in time): send the request again after "
    "Retry-After seconds"
)
_DESCRIPTIONS = {
    400: "Unparseable or structurally invalid request",
    401: "No valid credentials",
    403: "The caller's role may not do this",
    404: "No such resource visible to the caller",
    406: "Only FHIR JSON is served (Accept or _format asked for another format)",
    409: "Conflicts with the current state",
    410: "Gone: the referral's patient data was removed after its retention period",
    412: "A precondition (If-Match, If-None-Exist) failed",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Breaks a business rule",
    428: "If-Match is required (the version being changed)",
    429: "Too many requests",
    503: UNAVAILABLE_DESCRIPTION,
}


def fhir_error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {
            "description": _DESCRIPTIONS[status],
            "model": OperationOutcomeDoc,
            "content": {FHIR_MEDIA_TYPE: {}},
        }
        for status in statuses
    }


def api_error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {
            "description": _DESCRIPTIONS[status],
            "model": ProblemDetailsDoc,
            "content": {PROBLEM_MEDIA_TYPE: {}},
        }
        for status in statuses
    }


UNDEFINED_MEMBER = "holds a member this API does not define"


def validation_location(error: Mapping[str, Any]) -> tuple[int | str, ...]:
    """Where pydantic found ``error``, by declared names and positions only. A member the model
    does not define is located at its parent: its name is the client's, and may be anything."""
    location = tuple(error.get("loc", ()))
    if error.get("type") == "extra_forbidden":
        return location[:-1]
    return location


def validation_message(error: Mapping[str, Any]) -> str:
    """Pydantic's message for one error, without the value sent (it may be patient data or a
    secret). Most messages name only the rule; a few quote the input, and are rewritten."""
    context = error.get("ctx") or {}
    kind = error.get("type")
    if kind == "union_tag_invalid":
        return (
            f"unknown {context.get('discriminator', 'tag')}; "
            f"expected one of {context.get('expected_tags', '')}"
        )
    if kind == "extra_forbidden":
        return UNDEFINED_MEMBER
    message = str(error.get("msg", "is not valid")).split("\n", 1)[0]
    value = error.get("input")
    # A message that repeats what was sent (a validator's own wording may) says less instead.
    if isinstance(value, str | int | float) and len(str(value)) >= 2 and str(value) in message:
        return "has an invalid value"
    return message


# --- the last resort: errors no handler took ----------------------------------------------------

# Set in the request state once the request's failure has been logged, so it is logged once.
FAILURE_LOGGED = "failure_logged"
# Set in the request state when the answer is a 503 because the database was unavailable.
DATABASE_UNAVAILABLE = "database_unavailable"


class _UnavailableCounter(Protocol):
    def database_unavailable(self, reason: str) -> None: ...


def database_unavailable(scope: Scope, exc: BaseException) -> DatabaseUnavailable | None:
    """The answer to a request that failed because the database was unavailable, with its one
    log line (WARNING, the exception's type, no stack: an outage is not a bug, and would log
    thousands) and its count in the metrics; None when ``exc`` is anything else."""
    found = unavailability(exc)
    if found is None:
        return None
    state = scope.setdefault("state", {})
    if not state.get(FAILURE_LOGGED):
        # The ids also from the state: outside the request id middleware (in the server's
        # last-resort handler) its context is gone.
        ids = {key: state.get(key) for key in ("request_id", "correlation_id")}
        log.warning(
            "database unavailable",
            extra={**ids, "reason": found.reason, "error": found.error},
        )
        metrics: _UnavailableCounter | None = getattr(
            getattr(scope.get("app"), "state", None), "request_metrics", None
        )
        if metrics is not None:
            metrics.database_unavailable(found.reason)
    state[FAILURE_LOGGED] = True
    state[DATABASE_UNAVAILABLE] = True
    return DatabaseUnavailable(found)


def answer_to_failure(scope: Scope, exc: Exception) -> AppError:
    """What a request that raised ``exc`` (not an AppError) is answered: 503 if the database
    was unavailable, else 500, logged once with its stack (a bug: never hidden as a 503)."""
    refusal = database_unavailable(scope, exc)
    if refusal is not None:
        return refusal
    state = scope.setdefault("state", {})
    if not state.get(FAILURE_LOGGED):
        # The access log line with the same request id names the route (never the path, which
        # may hold identifiers).
        ids = {key: state.get(key) for key in ("request_id", "correlation_id")}
        log.error("unhandled error", exc_info=exc, extra=ids)
        state[FAILURE_LOGGED] = True
    return AppError("An internal error occurred; it has been logged")


class ErrorBoundary:
    """Answers a request whose handler raised an exception no handler took (see
    :func:`answer_to_failure`), and ends it there: the answer goes out through the other
    middlewares like any response (the audit trail, the access log, the request ids), and the
    exception is not raised on to the server, which would log it again with its stack.

    Added first, so it is the innermost middleware. Only when the response had already started is
    the exception raised on (the server then closes the connection)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_noting_start(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_noting_start)
        except Exception as exc:
            error = answer_to_failure(scope, exc)
            if started:
                raise
            await error_response(scope.get("path", ""), error)(scope, receive, send)
