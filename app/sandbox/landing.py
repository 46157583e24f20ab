"""The landing page at ``/``: in sandbox mode, everything an integrator needs to start (clients
and keys, synthetic patients, curl examples that work as they are); otherwise where the API
documentation is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

import app as package
from app.config import Settings
from app.sandbox import (
    SANDBOX_KEYS,
    SANDBOX_REFERRER_ORGANISATION,
    SANDBOX_SERVICE,
    SANDBOX_SERVICE_NAME,
    SANDBOX_SERVICE_ORGANISATION,
)
from app.sandbox.patients import PATIENTS, SyntheticPatient, referral_resource

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
# Only a plain scheme://host[:port] goes into the examples: they are shell text.
_PLAIN_BASE_URL = re.compile(
    r"^https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^https?://\[[0-9a-fA-F:.]+\](:[0-9]{1,5})?$"
)

_environment = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent / "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
)


@dataclass(frozen=True)
class Example:
    name: str  # the data-example attribute: tests run them
    title: str
    explanation: str
    script: str


def plain_base_url(candidate: str | None) -> str:
    """``candidate`` without a trailing slash if it is a plain http(s) origin, else the default."""
    if candidate:
        candidate = candidate.rstrip("/")
        if _PLAIN_BASE_URL.match(candidate):
            return candidate
    return DEFAULT_BASE_URL


def _key(role_value: str) -> str:
    return next(key for role, (key, _) in SANDBOX_KEYS.items() if role.value == role_value)


def examples(base_url: str, patient: SyntheticPatient = PATIENTS[0]) -> list[Example]:
    """The shell examples, in the order an integrator runs them, in one shell session."""
    clinical = _key("clinical-system")
    advisor = _key("advisor")
    admin = _key("admin")
    # The shell fills in a fresh identifier and the time now (an unquoted here-document).
    referral = referral_resource(
        patient,
        identifier="SBX-$(date -u +%Y%m%d%H%M%S)-$$",
        authored_on="$(date -u +%Y-%m-%dT%H:%M:%SZ)",
        requester=SANDBOX_REFERRER_ORGANISATION,
        service=SANDBOX_SERVICE,
    )
    body = json.dumps(referral, indent=2, ensure_ascii=False)
    return [
        Example(
            "webhook",
            "1. Receive webhooks (optional)",
            "Starts a receiver on port 9000 (in the background) that prints every signed "
            "notification, and subscribes it to the sandbox service's cases. Keep the secret the "
            "subscription returns: it verifies the signatures (Standard Webhooks). Any URL works "
            "in the sandbox, http and loopback too.",
            f"""python3 - <<'PY' &
from http.server import BaseHTTPRequestHandler, HTTPServer

class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        print(self.headers["webhook-id"], body.decode(), flush=True)
        self.send_response(204)
        self.end_headers()

HTTPServer(("127.0.0.1", 9000), Hook).serve_forever()
PY
BRIDGE={base_url}
curl -sS -X POST "$BRIDGE/api/v1/subscriptions" \\
  -H 'Authorization: Bearer {advisor}' -H 'Content-Type: application/json' \\
  -d '{{"url": "http://127.0.0.1:9000/hooks", "description": "my worklist"}}'
echo""",
        ),
        Example(
            "referral",
            "2. Make a referral",
            f"The clinical system refers {patient.given} {patient.family} (NHS number "
            f"{patient.nhs_number}) to {SANDBOX_SERVICE_NAME}. The answer is the stored "
            "ServiceRequest; its id goes in REFERRAL for the next steps.",
            f"""BRIDGE={base_url}
REFERRAL=$(curl -sS -X POST "$BRIDGE/fhir/ServiceRequest" \\
  -H 'Authorization: Bearer {clinical}' \\
  -H 'Content-Type: application/fhir+json' \\
  --data-binary @- <<EOF | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])'
{body}
EOF
)
echo "referral ServiceRequest/$REFERRAL"
""",
        ),
        Example(
            "follow",
            "3. Follow it",
            "The Task shows where the referral stands; the simulated platform moves it along "
            "within seconds. The journey Bundle holds the Task, appointments, social "
            "prescriptions and SWEMWBS scores in time order. Run it again to see it move.",
            f"""BRIDGE={base_url}
curl -sS "$BRIDGE/fhir/Task?focus=ServiceRequest/$REFERRAL" \\
  -H 'Authorization: Bearer {clinical}'
echo
curl -sS "$BRIDGE/fhir/ServiceRequest/$REFERRAL/\\$journey" \\
  -H 'Authorization: Bearer {clinical}'
echo""",
        ),
        Example(
            "reset",
            "4. Start again",
            "Removes every referral, case, subscription and delivery and seeds the sandbox "
            "again; the keys above keep working.",
            f"""BRIDGE={base_url}
curl -sS -X POST "$BRIDGE/api/v1/sandbox/reset" -H 'Authorization: Bearer {admin}'
echo""",
        ),
    ]


def render(settings: Settings, base_url: str) -> str:
    if not settings.sandbox:
        return _environment.get_template("home.html").render(version=package.__version__)
    clients = [
        {"role": role.value, "organisation": organisation, "key": key}
        for role, (key, organisation) in SANDBOX_KEYS.items()
    ]
    return _environment.get_template("sandbox.html").render(
        version=package.__version__,
        base_url=base_url,
        clients=clients,
        service={
            "id": SANDBOX_SERVICE,
            "name": SANDBOX_SERVICE_NAME,
            "organisation": SANDBOX_SERVICE_ORGANISATION,
        },
        referrer_organisation=SANDBOX_REFERRER_ORGANISATION,
        seed=settings.sandbox_seed,
        speed=settings.sandbox_clock_speed,
        patients=PATIENTS,
        examples=examples(base_url),
    )
