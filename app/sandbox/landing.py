"""The landing page at ``/``: in sandbox mode, everything an integrator needs to start (clients
and keys, synthetic patients, curl examples that work as they are); otherwise where the API
documentation is.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

import app as package
from app.config import Settings
from app.sandbox import (
    SANDBOX_KEYS,
    SANDBOX_REFERRER_ORGANISATION,
    SANDBOX_SERVICE,
    SANDBOX_SERVICE_NAME,
    SANDBOX_SERVICE_ORGANISATION,
    history,
)
from app.sandbox.patients import PATIENTS, SyntheticPatient, referral_resource

# The BaRS message's entries (full URLs of this message only).
_SR_URL = "urn:uuid:3b1d7a52-9c0e-4f7a-8d21-6e5f4c3b2a10"
_PATIENT_URL = "urn:uuid:5c2e8b63-ad1f-4a8b-9e32-7f6a5d4c3b21"
_CONSENT_URL = "urn:uuid:7d3f9c74-be20-4b9c-8f43-8a7b6e5d4c32"
_HEADER_URL = "urn:uuid:9e4a0d85-cf31-4cad-9a54-9b8c7f6e5d43"
SANDBOX_REFERRAL_SYSTEM = "https://sandbox.spbridge.example/Id/referral"  # app.sandbox.patients
_TOPIC_URL = "https://fhir.spbridge.org/SubscriptionTopic/referral-task-changed"
_BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"


def bars_message(referral: dict[str, Any], *, bundle_id: str, timestamp: str) -> dict[str, Any]:
    """``referral`` (its Patient and Consent contained) as a BaRS servicerequest-request
    message Bundle, its resources entries of their own."""
    service_request = copy.deepcopy(referral)
    patient, consent = (dict(r) for r in service_request.pop("contained"))
    patient.pop("id")
    consent.pop("id")
    consent["patient"] = {"reference": _PATIENT_URL}
    service_request["subject"] = {"reference": _PATIENT_URL}
    service_request["supportingInfo"] = [{"reference": _CONSENT_URL}]
    header = {
        "resourceType": "MessageHeader",
        "eventCoding": {
            "system": "https://fhir.nhs.uk/CodeSystem/message-events-bars",
            "code": "servicerequest-request",
        },
        "source": {"endpoint": "https://fhir.nhs.uk/Id/dos-service-id|2000000001"},
        "reason": {
            "coding": [
                {"system": "https://fhir.nhs.uk/CodeSystem/message-reason-bars", "code": "new"}
            ]
        },
        "focus": [{"reference": _SR_URL}],
    }
    return {
        "resourceType": "Bundle",
        "id": bundle_id,
        "type": "message",
        "timestamp": timestamp,
        "entry": [
            {"fullUrl": _HEADER_URL, "resource": header},
            {"fullUrl": _SR_URL, "resource": service_request},
            {"fullUrl": _PATIENT_URL, "resource": patient},
            {"fullUrl": _CONSENT_URL, "resource": consent},
        ],
    }


def _target(service: str) -> str:
    """NHSD-Target-Identifier naming ``service`` (base64 of a JSON object, as BaRS has it)."""
    value = {"value": service, "system": "https://fhir.spbridge.org/Id/service"}
    return base64.b64encode(json.dumps(value).encode()).decode()


def _subscription(endpoint: str) -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "meta": {"profile": [f"{_BACKPORT}/backport-subscription"]},
        "status": "requested",
        "reason": "Follow our referrals' Tasks",
        "criteria": _TOPIC_URL,
        "_criteria": {
            "extension": [
                {
                    "url": f"{_BACKPORT}/backport-filter-criteria",
                    "valueString": f"Task?requester={SANDBOX_REFERRER_ORGANISATION}",
                }
            ]
        },
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {
                "extension": [
                    {"url": f"{_BACKPORT}/backport-payload-content", "valueCode": "id-only"}
                ]
            },
        },
    }


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
    """The shell examples, in the order an integrator runs them, in one shell session: every
    path a user of the bridge has."""
    clinical = _key("clinical-system")
    advisor = _key("advisor")
    reporting = _key("reporting")
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
    seeded = f"{history.SEEDED_IDENTIFIER_SYSTEM}|{history.SEEDED_PREFIX}completed"
    bars_patient = PATIENTS[1]
    message = json.dumps(
        bars_message(
            referral_resource(
                bars_patient,
                identifier="$BARS_ID",
                authored_on="$(date -u +%Y-%m-%dT%H:%M:%SZ)",
                requester=SANDBOX_REFERRER_ORGANISATION,
                service=SANDBOX_SERVICE,
            ),
            bundle_id="$MESSAGE",
            timestamp="$(date -u +%Y-%m-%dT%H:%M:%SZ)",
        ),
        indent=2,
        ensure_ascii=False,
    )
    subscription = json.dumps(
        _subscription("http://127.0.0.1:$NOTIFY_PORT/notify"), indent=2, ensure_ascii=False
    )
    hub = history.COMMUNITY_HUB
    return [
        Example(
            "webhook",
            "1. Receive signed webhooks",
            "Subscribes a receiver to the cases of the sandbox organisation's services, then "
            "starts it in the background (on port 9000, or $HOOKS_PORT): it checks each "
            "notification's Standard Webhooks signature with the subscription's secret, in plain "
            "Python, and prints the ones that pass. Notifications carry ids and links, never "
            "the patient. Any URL works in the sandbox, http and loopback too.",
            f"""BRIDGE={base_url}
HOOKS_PORT=${{HOOKS_PORT:-9000}}
SECRET=$(curl -sS -X POST "$BRIDGE/api/v1/subscriptions" \\
  -H 'Authorization: Bearer {advisor}' -H 'Content-Type: application/json' \\
  -d '{{"url": "http://127.0.0.1:'"$HOOKS_PORT"'/hooks", "description": "my worklist"}}' \\
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["secret"])')
SECRET="$SECRET" python3 -u - "$HOOKS_PORT" <<'PY' &
import base64, hashlib, hmac, os, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer

KEY = base64.b64decode(os.environ["SECRET"].removeprefix("whsec_"))


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        ident, stamp = self.headers["webhook-id"], self.headers["webhook-timestamp"]
        signed = f"{{ident}}.{{stamp}}.".encode() + body
        expected = base64.b64encode(hmac.new(KEY, signed, hashlib.sha256).digest()).decode()
        sent = [part.partition(",")[2] for part in self.headers["webhook-signature"].split()]
        fresh = abs(time.time() - int(stamp)) < 300
        if not fresh or not any(hmac.compare_digest(expected, s) for s in sent):
            self.send_response(401)  # not signed with our secret, or too old: refused
            self.end_headers()
            return
        # One write per line (print writes its end apart): another receiver shares the terminal.
        sys.stdout.write(" ".join(("verified", ident, body.decode())) + "\\n")
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", int(sys.argv[1])), Hook).serve_forever()
PY
HOOKS=$!
echo "receiver on port $HOOKS_PORT (stop it with: kill $HOOKS)\"""",
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
            "journey",
            "4. Open the patient journey page",
            "A short-lived signed link to the page a clinician opens from the clinical record "
            "(it needs no key, for 15 minutes). The first is your referral's; the second is a "
            "seeded case of the community hub, referred ten weeks ago and completed after six "
            "weeks of support. Open either in a browser.",
            f"""BRIDGE={base_url}
curl -sS "$BRIDGE/api/v1/referrals/$REFERRAL/journey-link" \\
  -H 'Authorization: Bearer {clinical}'
echo
SEEDED=$(curl -sS -G "$BRIDGE/fhir/ServiceRequest" \\
  --data-urlencode 'identifier={seeded}' \\
  -H 'Authorization: Bearer {clinical}' \\
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["entry"][0]["resource"]["id"])')
curl -sS "$BRIDGE/api/v1/referrals/$SEEDED/journey-link" \\
  -H 'Authorization: Bearer {clinical}' \\
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["url"])'""",
        ),
        Example(
            "worklist",
            "5. See the advisors' worklist",
            "The open cases of the advisor's services, oldest first, with how long each has "
            "waited and its flags (first contact overdue, past the support window). The "
            "community hub's seeded cases are there from the start.",
            f"""BRIDGE={base_url}
curl -sS "$BRIDGE/api/v1/worklist" -H 'Authorization: Bearer {advisor}' | python3 -c '
import json, sys
for case in json.load(sys.stdin)["items"]:
    flags = " ".join(name for name, on in case["flags"].items() if on)
    print(case["case_id"], case["service"], case["state"], "waiting",
          case["waiting_days"], "days", flags)
'""",
        ),
        Example(
            "advisor",
            "6. Record what an advisor did",
            f"The community hub ({hub}) keeps its cases in the bridge, so its advisors record "
            "events through the API. This one reaches the person whose first contact is "
            "overdue; the answer shows the case's new state. (The simulated platform's cases "
            "are changed on that platform: the API refuses them with 409.)",
            f"""BRIDGE={base_url}
CASE=$(curl -sS "$BRIDGE/api/v1/worklist?first_contact_overdue=true" \\
  -H 'Authorization: Bearer {advisor}' \\
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["items"][0]["case_id"])')
curl -sS -X POST "$BRIDGE/api/v1/cases/$CASE/events" \\
  -H 'Authorization: Bearer {advisor}' -H 'Content-Type: application/json' \\
  -d '{{"type": "contact.attempted", "outcome": "reached", "method": "telephone"}}'
echo""",
        ),
        Example(
            "report",
            "7. Read the evaluation report",
            "The community hub's activity report for the last twelve months, as CSV (one line "
            "per figure) and as a printable HTML page with charts, written to files here.",
            f"""BRIDGE={base_url}
curl -sS -o activity.csv -H 'Authorization: Bearer {reporting}' \\
  "$BRIDGE/api/v1/reports/activity?service={hub}&format=csv"
curl -sS -o activity.html -H 'Authorization: Bearer {reporting}' \\
  "$BRIDGE/api/v1/reports/activity?service={hub}&format=html"
sed -n 1,12p activity.csv
echo "wrote activity.csv and activity.html\"""",
        ),
        Example(
            "subscription",
            "8. Subscribe with FHIR Subscriptions",
            "The clinical system subscribes to the topic 'referral Task changed' (FHIR "
            "Subscriptions, R5 Backport on R4), filtered to its own referrals, and starts a "
            "receiver in the background (port 9001, or $NOTIFY_PORT) that prints each "
            "notification: a handshake first, then one per change, numbered, with the Task's "
            "id only (content id-only): never the patient.",
            f"""BRIDGE={base_url}
NOTIFY_PORT=${{NOTIFY_PORT:-9001}}
python3 -u - "$NOTIFY_PORT" <<'PY' &
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Notified(BaseHTTPRequestHandler):
    def do_POST(self):
        bundle = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status = bundle["entry"][0]["resource"]["parameter"]
        kind = next(p["valueCode"] for p in status if p["name"] == "type")
        events = [p["part"] for p in status if p["name"] == "notification-event"]
        for part in events:
            number = next(q["valueString"] for q in part if q["name"] == "event-number")
            focus = next(q["valueReference"]["reference"] for q in part if q["name"] == "focus")
            sys.stdout.write(" ".join(("notified", kind, number, focus)) + "\\n")
        if not events:
            sys.stdout.write("notified " + kind + "\\n")
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", int(sys.argv[1])), Notified).serve_forever()
PY
NOTIFIER=$!
# The handshake comes as soon as the subscription is made: let the receiver listen first.
until python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])))' \\
  "$NOTIFY_PORT" 2>/dev/null; do sleep 0.1; done
SUBSCRIPTION=$(curl -sS -X POST "$BRIDGE/fhir/Subscription" \\
  -H 'Authorization: Bearer {clinical}' \\
  -H 'Content-Type: application/fhir+json' \\
  --data-binary @- <<EOF | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])'
{subscription}
EOF
)
# Active once its handshake has reached the receiver: only then are changes notified.
for _ in $(seq 50); do
  STATUS=$(curl -sS "$BRIDGE/fhir/Subscription/$SUBSCRIPTION" \\
    -H 'Authorization: Bearer {clinical}' \\
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["status"])')
  [ "$STATUS" = active ] && break
  sleep 0.2
done
echo "Subscription/$SUBSCRIPTION (stop the receiver with: kill $NOTIFIER)\"""",
        ),
        Example(
            "bars",
            "9. Send a BaRS referral",
            "A referral as a BaRS message (NHS Booking and Referral Standard) to "
            f"$process-message, about {bars_patient.given} {bars_patient.family}: "
            "NHSD-Target-Identifier names the service, X-Request-ID the message. It becomes a "
            "referral like any other (the subscription above hears of it); sending the same "
            "message again is 409 REC_CONFLICT. Then its Task, and the subscription's status.",
            f"""BRIDGE={base_url}
MESSAGE=$(python3 -c 'import uuid; print(uuid.uuid4())')
BARS_ID="BARS-$(date -u +%Y%m%d%H%M%S)-$$"
cat > bars-message.json <<EOF
{message}
EOF
for attempt in first repeat; do
  curl -sS -w ' HTTP %{{http_code}}\\n' -X POST "$BRIDGE/fhir/\\$process-message" \\
    -H 'Authorization: Bearer {clinical}' \\
    -H 'Content-Type: application/fhir+json' \\
    -H "X-Request-ID: $MESSAGE" \\
    -H 'NHSD-Target-Identifier: {_target(SANDBOX_SERVICE)}' \\
    -H 'NHSD-End-User-Organisation-ODS: {SANDBOX_REFERRER_ORGANISATION}' \\
    --data-binary @bars-message.json
done
BARS=$(curl -sS -G "$BRIDGE/fhir/ServiceRequest" \\
  --data-urlencode "identifier={SANDBOX_REFERRAL_SYSTEM}|$BARS_ID" \\
  -H 'Authorization: Bearer {clinical}' \\
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["entry"][0]["resource"]["id"])')
curl -sS "$BRIDGE/fhir/Task?focus=ServiceRequest/$BARS" -H 'Authorization: Bearer {clinical}'
echo
curl -sS "$BRIDGE/fhir/Subscription/$SUBSCRIPTION/\\$status" \\
  -H 'Authorization: Bearer {clinical}'
echo""",
        ),
        Example(
            "reset",
            "10. Start again",
            "Removes every referral, case, subscription and delivery, and seeds the sandbox "
            "again (the community hub's cases too, timed from now); the keys above keep working.",
            f"""BRIDGE={base_url}
curl -sS -X POST "$BRIDGE/api/v1/sandbox/reset" -H 'Authorization: Bearer {admin}'
echo""",
        ),
    ]


def _ago(days: float) -> str:
    if days < 1:
        return "today"
    if days < 14:
        return f"{round(days)} days ago"
    return f"{round(days / 7)} weeks ago"


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
        hub={"id": history.COMMUNITY_HUB, "name": history.COMMUNITY_HUB_NAME},
        seeded=[
            {
                "identifier": case.identifier,
                "what": case.what,
                "patient": PATIENTS[case.patient],
                "received": _ago(case.received_days_ago),
            }
            for case in history.SEEDED_CASES
        ],
        seeded_system=history.SEEDED_IDENTIFIER_SYSTEM,
        referrer_organisation=SANDBOX_REFERRER_ORGANISATION,
        seed=settings.sandbox_seed,
        speed=settings.sandbox_clock_speed,
        patients=PATIENTS,
        examples=examples(base_url),
    )
