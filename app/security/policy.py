"""The rule of every route, read from the app itself (DESIGN §7, §8).

A protected route declares its operation once, where it is defined, with
``Depends(require(Operation.…))``; ``PERMISSIONS`` (app.security.roles) says which roles may do each
operation. A route that takes no API key must be listed in ``PUBLIC_ROUTES`` with the reason.
:func:`route_rules` walks every route the app registers and refuses a route with neither, so a
new route without a rule fails the test suite (tests/test_authorisation.py). Nothing here runs
at startup.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import fastapi.routing
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant

from app.security.auth import required_operation
from app.security.roles import Operation

RouteKey = tuple[str, str]  # (HTTP method, path template as registered, e.g. /fhir/Task/{task_id})


@dataclass(frozen=True)
class Public:
    """A route that takes no API key, and why that is safe."""

    reason: str


Rule = Operation | Public

_DOCS = "the API description: no data, no key (as for any public API)"

PUBLIC_ROUTES: dict[RouteKey, Public] = {
    ("GET", "/healthz"): Public("liveness probe: answers only that the process is alive"),
    ("GET", "/"): Public(
        "the landing page: links to the API documentation; in sandbox mode also the sandbox's "
        "fixed public keys and synthetic patients, made to be shared (no real data there)"
    ),
    ("GET", "/readyz"): Public(
        "readiness probe, called by orchestrators and load balancers, which have no key: "
        "answers only whether the database, the schema and the dispatcher are usable, naming "
        "failed checks without secrets"
    ),
    ("GET", "/metrics"): Public(
        "Prometheus metrics, scraped without a key: counts and timings by route template, kind "
        "of destination, state and event type only; no patient data and no identifiers (no "
        "paths, ids, services, organisations or URLs). Keep it off the public internet"
    ),
    ("GET", "/fhir/metadata"): Public(
        "the FHIR CapabilityStatement, which FHIR clients read before authenticating; no data"
    ),
    ("GET", "/.well-known/smart-configuration"): Public(
        "OAuth2 discovery (SMART configuration), which clients read before they have a token: "
        "the token endpoint and the methods it takes; no data"
    ),
    ("GET", "/fhir/.well-known/smart-configuration"): Public(
        "the same OAuth2 discovery beside the FHIR base, where SMART clients look; no data"
    ),
    ("GET", "/openapi.json"): Public(_DOCS),
    ("GET", "/docs"): Public(_DOCS),
    ("GET", "/docs/oauth2-redirect"): Public(_DOCS),
    ("GET", "/redoc"): Public(_DOCS),
    ("GET", "/docs/assets/{name}"): Public(
        "the documentation pages' scripts, style sheet and icon: four fixed files shipped with "
        "the app (fastapi-offline), so the pages work where a CDN is blocked"
    ),
    ("POST", "/api/v1/adapters/{adapter}/{service_id}/webhook"): Public(
        "a platform's inbound events: authenticated by the service's Standard Webhooks "
        "signature and timestamp, verified before anything in the body is used"
    ),
    ("POST", "/oauth2/token"): Public(
        "the OAuth2 token endpoint: the client authenticates there with its own credentials "
        "(client_secret_basic or a signed private_key_jwt assertion), not with a key"
    ),
    ("GET", "/journey/{referral_id}"): Public(
        "the patient journey page: opened by a short-lived token, signed by the bridge and bound "
        "to one referral, that only a client allowed to see the referral can obtain "
        "(GET /api/v1/referrals/{referral_id}/journey-link)"
    ),
}


class PolicyError(Exception):
    """Routes whose rule is missing or ambiguous, one problem per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _operations(dependant: Dependant) -> set[Operation]:
    """Every operation a require() dependency checks anywhere in the route's dependency tree."""
    found: set[Operation] = set()
    operation = required_operation(dependant.call)
    if operation is not None:
        found.add(operation)
    for sub in dependant.dependencies:
        found |= _operations(sub)
    return found


def _registered(app: FastAPI) -> Iterator[tuple[str, set[str] | None, Dependant | None]]:
    """(path, methods, dependant) of every route, with the prefixes of included routers."""
    # Recent FastAPI keeps each included router as one branch of app.routes, which
    # iter_route_contexts flattens (with the prefixes); older versions copy every route there.
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    routes: Any = flatten(app.routes) if flatten is not None else app.routes
    for route in routes:
        path = getattr(route, "path", None) or repr(route)
        methods: set[str] | None = getattr(route, "methods", None)
        dependant = getattr(route, "dependant", None)
        yield path, methods, dependant if isinstance(dependant, Dependant) else None


def route_rules(
    app: FastAPI, public_routes: Mapping[RouteKey, Public] = PUBLIC_ROUTES, *, strict: bool = True
) -> dict[RouteKey, Rule]:
    """The rule of every (method, path) the app serves: the Operation its require() dependency
    checks, or its entry in ``public_routes``. Raises :class:`PolicyError` naming every route
    with no rule, with two, or with a public entry as well as a key; and every public entry the
    app does not serve. HEAD is answered by the GET handler, so it has GET's rule. Not
    ``strict``: the rules there are, without complaint about the rest (for tests that add a
    route of their own to an app)."""
    rules: dict[RouteKey, Rule] = {}
    served: set[RouteKey] = set()
    problems: list[str] = []
    for path, methods, dependant in _registered(app):
        if not methods:
            problems.append(f"{path}: not an HTTP route this check understands (a mount?)")
            continue
        operations = _operations(dependant) if dependant is not None else set()
        for method in sorted(methods - {"HEAD"} or methods):
            key = (method, path)
            public = public_routes.get(key)
            where = f"{method} {path}"
            if key in served:
                problems.append(f"{where} is registered twice")
            elif len(operations) > 1:
                listed = ", ".join(sorted(operations))
                problems.append(f"{where} checks several operations ({listed}); give it one")
            elif operations and public is not None:
                problems.append(f"{where} requires a key but is also listed in PUBLIC_ROUTES")
            elif operations:
                rules[key] = next(iter(operations))
            elif public is not None:
                rules[key] = public
            else:
                problems.append(
                    f"{where} has no rule: add Depends(require(Operation.…)) to it, or list it "
                    "in PUBLIC_ROUTES (app/security/policy.py) with the reason it needs no key"
                )
            served.add(key)
    for method, path in sorted(public_routes.keys() - served):
        problems.append(f"PUBLIC_ROUTES lists {method} {path}, which the app does not serve")
    if problems and strict:
        raise PolicyError(problems)
    return rules
