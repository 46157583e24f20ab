import copy, json, uuid
import orjson
from tests.conftest import FHIR_JSON, referral_resource

def bundle():
    sr = referral_resource()
    patient = sr["contained"][0]; consent = sr["contained"][1]
    del patient["id"]; del consent["id"]
    sr["contained"] = []
    P, S, C, D, Q = (f"urn:uuid:{uuid.uuid4()}" for _ in range(5))
    consent["patient"] = {"reference": P}
    sr["subject"] = {"reference": P}
    sr["supportingInfo"] = [{"reference": C}]
    sr["reasonReference"] = [{"reference": D}]
    cond = {"resourceType": "Condition", "subject": {"reference": P}, "code": {"text": "Debt"}}
    qr = {"resourceType": "QuestionnaireResponse", "status": "completed", "subject": {"reference": P}, "basedOn": [{"reference": S}]}
    post = {"method": "POST", "url": "x"}
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": P, "resource": patient, "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": S, "resource": sr, "request": {"method": "POST", "url": "ServiceRequest"}},
        {"fullUrl": C, "resource": consent, "request": {"method": "POST", "url": "Consent"}},
        {"fullUrl": D, "resource": cond, "request": {"method": "POST", "url": "Condition"}},
        {"fullUrl": Q, "resource": qr, "request": {"method": "POST", "url": "QuestionnaireResponse"}},
    ]}

async def test_explore(bridge, client):
    s = await bridge.service()
    key = await bridge.key(default_service=s)
    b = bundle()
    r = await client.post("/fhir", content=orjson.dumps(b), headers={**key, **FHIR_JSON})
    print(r.status_code, json.dumps(r.json(), indent=1)[:6000])
    r = await client.post("/fhir", content=orjson.dumps(b), headers={**key, **FHIR_JSON})
    print(r.status_code, [e["response"]["status"] for e in r.json()["entry"]])
    b2 = bundle(); b2["entry"][0]["resource"]["foo"] = 1; b2["entry"][0]["resource"]["name"][0]["bar"] = 1
    r = await client.post("/fhir", content=orjson.dumps(b2), headers={**key, **FHIR_JSON})
    print(r.status_code, r.text)

async def test_probe(bridge, client):
    s = await bridge.service()
    key = await bridge.key(default_service=s)
    async def post(b, path="/fhir"):
        try:
            r = await client.post(path, content=orjson.dumps(b), headers={**key, **FHIR_JSON})
            print(r.status_code, r.text[:400])
        except Exception as e:
            print("EXC", type(e).__name__, e)
    for ine in ["foo=bar", "identifier=", "identifier", "_lastUpdated=xx", "identifier=a|b&identifier=c", "?", "&&", "patient.identifier=|", "_id=", "status=active", "_count=abc", "_lastUpdated=ge2020-01-01"]:
        b = bundle(); b["entry"][1]["request"]["ifNoneExist"] = ine
        print(ine, end=": "); await post(b)
    b = bundle(); b["entry"] = []; await post(b)
    b = bundle(); del b["entry"]; await post(b)
    b = bundle(); b["entry"][0]["request"]["method"] = "post"; await post(b)
    b = bundle(); del b["entry"][0]["request"]; await post(b)
    b = bundle(); del b["entry"][0]["resource"]; await post(b)
    b = bundle(); b["entry"][0]["resource"]["identifier"][0]["value"] = "3478526985"; await post(b)
    b = bundle(); b["entry"][1]["resource"]["intent"] = "plan"; await post(b)
    b = bundle(); b["entry"][1]["resource"]["subject"] = {"reference": b["entry"][2]["fullUrl"]}; await post(b)
    b = bundle(); b["entry"][0]["resource"]["id"] = "p1"; b["entry"][1]["resource"]["subject"] = {"reference": "Patient/p1"}; await post(b)
    b = bundle(); b["entry"][1]["resource"]["subject"]["identifier"] = {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}; await post(b)
    b = bundle(); b["entry"].append(copy.deepcopy(b["entry"][0])); await post(b)
    b = bundle(); b["entry"][1]["resource"]["contained"] = [{"resourceType": "Patient", "id": "patient"}]; await post(b)
    b = bundle(); b["entry"][0]["resource"] = {"resourceType": "Basic", "code": {"text": "x"}}; await post(b)
    b = bundle(); b["entry"][0]["resource"] = {"resourceType": "Nope"}; await post(b)
    b = bundle(); b["entry"][0]["resource"] = {}; await post(b)
    b = bundle(); b["entry"][0]["resource"] = {"resourceType": "Bundle", "type": "transaction"}; await post(b)
    b = bundle(); b["entry"][0]["resource"] = {"resourceType": "ServiceRequest", "status": "active", "intent": "order", "subject": {"reference": "x"}}; await post(b)
    b = bundle(); b["entry"][1]["fullUrl"] = b["entry"][0]["fullUrl"]; await post(b)

    sr = referral_resource(); sr["contained"].append({"resourceType": "Nope"}); await post(sr, "/fhir/ServiceRequest")
    sr = referral_resource(); sr["contained"].append({}); await post(sr, "/fhir/ServiceRequest")
    sr = referral_resource(); sr["contained"].append({"resourceType": 5}); await post(sr, "/fhir/ServiceRequest")
    sr = referral_resource(); sr["contained"].append("x"); await post(sr, "/fhir/ServiceRequest")
    b = bundle(); b["entry"][0]["resource"] = {"resourceType": 5}; await post(b)
    b = bundle(); b["entry"][0]["resource"] = []; await post(b)
    await post({"resourceType": "Nope"}, "/fhir/ServiceRequest")
    await post({"resourceType": "Nope"})
