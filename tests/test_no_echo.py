"""Error messages never quote what the client sent (docs/SECURITY.md T7; issue 13 part 7).

A scan over every route the app registers, as the PII scans of logs and webhooks are: each route
is called by a key whose role may call it, with real ids (the world of tests/test_authorisation.py),
and with a marker string put, one way at a time, where a client could put anything: as unknown
JSON members (at the top and nested), as unknown query parameters, as the values of known body
fields and query parameters, as path ids, in header values (Host included) and in form fields.
The marker must never come back in a response's body or headers. The exceptions are successful
answers with data the service holds: to a request that put the marker in a known field's value
(a created client's name, a search's self link), and reads whose answer carries the marker just
as well without it being sent (the audit trail records the ids earlier requests asked for).
X-Request-ID and X-Correlation-ID are echoed by design and are not marked.

The hostile run's quotes, each of which must stay gone: "got ZQXPatient", "ServiceRequest.
ZQXfield is not an element", "Unsupported search parameter 'ZQX'", "ZQX: Extra inputs are not
permitted", OAuth2 "The parameter '<script>ZQX' is repeated".
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import orjson
import pytest

from app.security.policy import Public, Rule, route_rules
from app.security.roles import PERMISSIONS, Role
from tests.clients.test_authorisation import Call, World, build_world
from tests.conftest import ADMIN_KEY, FHIR_JSON, Bridge
from tests.support.elemental_platform import signed_webhook

MARKER = "ZQXmarker"
SCRIPT_MARKER = f"<script>{MARKER}"
# In the values of known fields: what the service may hold, and show again, once it took it.
VALUE_MARKER = "ZQXvalue"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the elemental service's in the world
_PARAMETER = re.compile(r"\{(\w+)(?::[^}]*)?\}")
# Preferred callers, in order: the bootstrap admin sees every organisation's objects.
_CALLERS = ["bootstrap admin", "clinical-system", "advisor", "platform", "reporting"]


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"allowed_outbound_hosts": ["127.0.0.1"]}


@pytest.fixture
async def lenient(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Answers the app's 500s instead of raising, so the scan reports every problem at once."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


def leaks(response: httpx.Response) -> list[str]:
    """Where the marker comes back: the body, or a header's name or value."""
    found = []
    for marker in (MARKER.lower(), VALUE_MARKER.lower()):
        text = response.text.lower()
        if marker in text:
            at = text.index(marker)
            found.append(f"body: …{response.text[max(0, at - 80) : at + 40]}…")
        found += [
            f"header {name}: {value[:120]}"
            for name, value in response.headers.items()
            if marker in name.lower() or marker in value.lower()
        ]
    return found


def mark_keys(value: Any, depth: int = 0) -> Any:
    """``value`` with a member named by the marker added to every object, to three levels."""
    if isinstance(value, dict):
        marked = {key: mark_keys(child, depth + 1) for key, child in value.items()}
        if depth < 3:
            marked[MARKER] = MARKER
        return marked
    if isinstance(value, list):
        return [mark_keys(child, depth + 1) for child in value]
    return value


def mark_values(value: Any) -> Any:
    """``value`` with every scalar replaced by the value marker (the names kept)."""
    if isinstance(value, dict):
        return {key: mark_values(child) for key, child in value.items()}
    if isinstance(value, list):
        return [mark_values(child) for child in value]
    return VALUE_MARKER


@dataclass
class Request:
    what: str
    url: str
    params: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # True when the marker is a known field's value: a success may then answer with it.
    value: bool = False


def caller_of(rule: Rule) -> str:
    if isinstance(rule, Public):
        return "bootstrap admin"
    allowed = PERMISSIONS[rule]
    roles = {name: Role.ADMIN if name == "bootstrap admin" else Role(name) for name in _CALLERS}
    return next(name for name in _CALLERS if roles[name] in allowed)


def documented_query_parameters(openapi: dict[str, Any], method: str, path: str) -> list[str]:
    operation = openapi["paths"].get(path, {}).get(method.lower(), {})
    return [p["name"] for p in operation.get("parameters", []) if p.get("in") == "query"]


def example_body(openapi: dict[str, Any], method: str, path: str) -> Any:
    """A body for an operation that takes one: its documented example, else an empty object."""
    operation = openapi["paths"].get(path, {}).get(method.lower(), {})
    content = operation.get("requestBody", {}).get("content", {})
    for media in content.values():
        if "example" in media:
            return media["example"]
        for example in media.get("examples", {}).values():
            if isinstance(example, dict) and "value" in example:
                return example["value"]
    return {} if content else None


def requests_for(
    world: World, openapi: dict[str, Any], method: str, template: str, caller: str
) -> list[Request]:
    """Every way of marking one call to ``template`` by ``caller``."""
    url, _ = world.path(method, template, caller)
    call = world.call(method, template, caller)
    if call.headers.get("Content-Type") == "application/x-ndjson":
        # An import file (the matrix sends an empty one): marked from the document's example,
        # with the query parameters the matrix names.
        call = Call(params=call.params)
    base_headers = dict(call.headers)
    form = base_headers.get("Content-Type") == "application/x-www-form-urlencoded"
    if call.content is not None and form:
        base_body: Any = dict(parse_qsl(call.content.decode()))  # POST _search
    elif call.content is not None:
        base_body = orjson.loads(call.content)
    elif call.json is not None:
        base_body = call.json
    else:
        base_body = example_body(openapi, method, template)
    fhir = template.startswith("/fhir")
    json_type = FHIR_JSON if fhir else {"Content-Type": "application/json"}
    if form:
        json_type = {"Content-Type": "application/x-www-form-urlencoded"}

    def body(value: Any) -> bytes:
        if form:
            flat = value if isinstance(value, dict) else {"": value}
            return urlencode({str(k): str(v) for k, v in flat.items()}).encode()
        return orjson.dumps(value)

    requests = [
        Request("an unknown query parameter", url, {**call.params, MARKER: MARKER}),
        Request(
            "an unknown query parameter named like a tag", url, {**call.params, SCRIPT_MARKER: "1"}
        ),
    ]
    names = set(call.params) | set(documented_query_parameters(openapi, method, template))
    if names:
        requests.append(
            Request(
                "values of the query parameters",
                url,
                dict.fromkeys(names, VALUE_MARKER),
                value=True,
            )
        )
    # One at a time too, the others as the call has them: each reaches its own check.
    requests += [
        Request(f"the value of {name}", url, {**call.params, name: VALUE_MARKER}, value=True)
        for name in sorted(names)
    ]
    if "{" in template:
        marked_url = _PARAMETER.sub(MARKER, template)
        requests.append(Request("path ids", marked_url, dict(call.params)))
    if base_body is not None:
        for what, marked, value in [
            ("unknown members in the body", mark_keys(base_body), False),
            ("values of the body's fields", mark_values(base_body), True),
            ("a body that is not JSON", None, False),
        ]:
            content = body(marked) if marked is not None else MARKER.encode()
            requests.append(
                Request(what, url, dict(call.params), content, {**base_headers, **json_type}, value)
            )
        if isinstance(base_body, dict):
            for name in sorted(base_body):
                one = {**base_body, name: mark_values(base_body[name])}
                requests.append(
                    Request(
                        f"the value of {name} in the body",
                        url,
                        dict(call.params),
                        body(one),
                        {**base_headers, **json_type},
                        value=True,
                    )
                )
        if fhir and isinstance(base_body, dict) and not form:
            other_type = {**base_body, "resourceType": MARKER + "Patient"}
            requests.append(
                Request(
                    "a resourceType of the client's", url, {}, body(other_type), dict(FHIR_JSON)
                )
            )
    header_values = {
        "If-Match": f'W/"{MARKER}"',
        "If-None-Exist": f"identifier={MARKER}|{MARKER}&{MARKER}=1",
        "Prefer": f"return={MARKER}",
        "Accept": f"application/{MARKER}",
        "Host": MARKER,
        "X-Forwarded-Host": MARKER,
        "X-Forwarded-Proto": MARKER,
        "Forwarded": f"host={MARKER};proto=https",
        "Origin": f"https://{MARKER}.example",
        "webhook-id": MARKER,
        "webhook-timestamp": MARKER,
        "webhook-signature": f"v1,{MARKER}",
    }
    marked_body = body(base_body) if base_body is not None else None
    requests.append(
        Request(
            "header values",
            url,
            dict(call.params),
            marked_body,
            {**base_headers, **(json_type if marked_body else {}), **header_values},
        )
    )
    if base_body is not None:
        requests.append(
            Request(
                "the Content-Type",
                url,
                dict(call.params),
                marked_body,
                {"Content-Type": f"application/{MARKER}"},
            )
        )
    return requests


async def test_no_route_quotes_what_the_client_sent(
    app: Any, bridge: Bridge, lenient: httpx.AsyncClient
) -> None:
    world = await build_world(bridge)
    openapi = app.openapi()
    rules = route_rules(app)
    problems: list[str] = []
    sent = 0
    # Deletes last: the rest need what they delete.
    for method, template in sorted(rules, key=lambda k: (k[0] == "DELETE", k[1], k[0])):
        caller = caller_of(rules[method, template])
        credentials = world.keys[caller]
        for request in requests_for(world, openapi, method, template, caller):
            response = await lenient.request(
                method,
                request.url,
                params=request.params,
                content=request.body,
                headers={**credentials, **request.headers},
            )
            sent += 1
            where = f"{method} {template} ({request.what}, as {caller}): {response.status_code}"
            if response.status_code >= 500:
                problems.append(f"{where}: a server error")
            found = leaks(response)
            if found and response.status_code < 400:
                if request.value:
                    continue  # the value it was asked to hold or look for
                if method == "GET" or template.endswith("/_search"):
                    # Held data, such as an audit record of an earlier request of this scan,
                    # is answered without any marker sent: not an echo. (POST _search is a
                    # search: asked again as the GET it stands for.)
                    unmarked = world.call(method, template, caller)
                    params = dict(unmarked.params)
                    if (
                        template.endswith("/_search")
                        and unmarked.content is not None
                        # A body that is not a form is no search parameters: a search of all.
                        and request.what != "a body that is not JSON"
                    ):
                        params.update(parse_qsl(unmarked.content.decode()))
                    again = await lenient.get(
                        template.removesuffix("/_search")
                        if template.endswith("/_search")
                        else request.url
                        if "{" not in template
                        else world.path(method, template, caller)[0],
                        params=params,
                        headers=credentials,
                    )
                    if again.status_code < 400 and leaks(again):
                        continue
            problems += [f"{where}: {leak}" for leak in found]
        # And with a key the bridge never issued, in the Authorization header itself.
        refused = await lenient.request(
            method,
            world.path(method, template, caller)[0],
            headers={"Authorization": f"Bearer {MARKER}"},
        )
        sent += 1
        problems += [f"{method} {template} (a bearer key): {leak}" for leak in leaks(refused)]
    assert not problems, "\n".join(problems)
    assert sent >= 4 * len(rules)  # every route, in every way that applies to it


async def test_the_token_endpoint_quotes_no_form_field(lenient: httpx.AsyncClient) -> None:
    form = "application/x-www-form-urlencoded"
    bodies = [
        f"grant_type=client_credentials&{SCRIPT_MARKER}=1&{SCRIPT_MARKER}=2",  # repeated
        f"grant_type=client_credentials&grant_type={MARKER}",
        f"grant_type={MARKER}",
        f"grant_type=client_credentials&scope={MARKER}&client_id={MARKER}",
        f"grant_type=client_credentials&client_assertion_type={MARKER}&client_assertion={MARKER}",
        "grant_type=client_credentials&client_assertion_type="
        f"urn:ietf:params:oauth:client-assertion-type:jwt-bearer&client_assertion={MARKER}",
        f"grant_type=client_credentials&client_secret={MARKER}",
        f"{MARKER}={MARKER}",
        MARKER,
    ]
    problems = []
    for content in bodies:
        for headers in (
            {"Content-Type": form},
            {"Content-Type": form, "Authorization": "Basic WlFYbWFya2VyOlpRWG1hcmtlcg=="},
            {"Content-Type": f"application/{MARKER}"},
        ):
            response = await lenient.post(
                "/oauth2/token", content=urlencode_safe(content), headers=headers
            )
            assert 400 <= response.status_code < 500, (content, response.text)
            problems += [f"{content!r} {headers}: {leak}" for leak in leaks(response)]
    assert not problems, "\n".join(problems)


def urlencode_safe(text: str) -> bytes:
    """The form as a client would send it: names and values percent-encoded."""
    pairs = [part.partition("=") for part in text.split("&")]
    return "&".join(
        urlencode({name: value}) if sep else urlencode({name: ""})[:-1]
        for name, sep, value in pairs
    ).encode()


async def test_the_platform_webhook_quotes_nothing_of_a_signed_message(
    app: Any, bridge: Bridge, lenient: httpx.AsyncClient
) -> None:
    """Behind a good signature the body is the platform's: its unknown members, values and
    event type come back in no answer."""
    await build_world(bridge)
    events: list[dict[str, Any]] = [
        {"id": "evt-1", "type": MARKER, "timestamp": "2026-01-01T00:00:00Z", "data": {}},
        {
            "id": "evt-2",
            "type": "referral.closed",
            "timestamp": "2026-01-01T00:00:00Z",
            "data": {"referral_id": MARKER, "closure_reason": MARKER, MARKER: MARKER},
        },
        {
            "id": "evt-3",
            "type": "contact.logged",
            "timestamp": MARKER,
            "data": {"referral_id": "EL-1", MARKER: MARKER},
        },
        {"id": MARKER, "type": "referral.paused", "timestamp": "0001-01-01T00:00:00+23:59"},
        mark_keys({"id": "evt-5", "type": "referral.paused", "timestamp": "2026-01-01T00:00:00Z"}),
    ]
    problems = []
    for event in events:
        body, headers = signed_webhook(WEBHOOK_SECRET, event)
        response = await lenient.post(
            "/api/v1/adapters/elemental/elemental-hub/webhook", content=body, headers=headers
        )
        assert response.status_code < 500, response.text
        problems += [f"{event}: {leak}" for leak in leaks(response)]
    assert not problems, "\n".join(problems)


async def test_a_nul_character_is_located_without_naming_unknown_members(
    bridge: Bridge, lenient: httpx.AsyncClient
) -> None:
    """NUL characters are refused before the body reaches its route (app/limits.py), where no
    schema says which names are the client's: a member no schema declares is named by its
    parent, a declared one by itself. (Hypothesis found the first.)"""
    for payload, pointer in [
        ({"url": "https://example.org/h", MARKER: "a\x00"}, "body"),
        ({"url": "https://example.org/h", MARKER: {"inner": ["a\x00"]}}, "body"),
        ({"url": "https://example.org/h", "description": "a\x00"}, "description"),
        ({f"{MARKER}\x00": 1}, "body"),
    ]:
        response = await lenient.post(
            "/api/v1/subscriptions",
            content=orjson.dumps(payload),
            headers={**ADMIN, "Content-Type": "application/json"},
        )
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["pointer"] == pointer
        assert not leaks(response), response.text


def test_the_markers_are_found_where_they_are() -> None:
    """The scan's own check finds the marker in a body, a header name and a header value."""
    for response in (
        httpx.Response(400, text=f"bad {MARKER.upper()}"),
        httpx.Response(400, headers={f"x-{MARKER}": "1"}),
        httpx.Response(400, headers={"location": f"http://{MARKER}/x"}),
    ):
        assert leaks(response)
    assert not leaks(httpx.Response(400, text="bad input"))
    assert mark_keys({"a": {"b": 1}}) == {"a": {"b": 1, MARKER: MARKER}, MARKER: MARKER}
    assert mark_values({"a": [1, "x"]}) == {"a": [VALUE_MARKER, VALUE_MARKER]}
    assert leaks(httpx.Response(422, text=f"bad {VALUE_MARKER}"))
