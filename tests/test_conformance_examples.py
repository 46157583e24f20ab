import json
from pathlib import Path
import orjson
from tests.conftest import FHIR_JSON

EX = Path(__file__).parent / "fixtures" / "fhir-examples"

async def test_explore(bridge, client):
    s = await bridge.service()
    key = await bridge.key(default_service=s)
    for f in sorted(EX.rglob("*.json")):
        data = orjson.loads(f.read_bytes())
        path = "/fhir" if data["resourceType"] == "Bundle" else "/fhir/ServiceRequest"
        r = await client.post(path, content=f.read_bytes(), headers={**key, **FHIR_JSON})
        body = r.json()
        print("\n==", f.relative_to(EX), path, r.status_code)
        for i in body.get("issue", []):
            print("   ", i["code"], i.get("expression"), i["diagnostics"][:150])
