"""openapi/openapi.json is generated from the app (`spbridge openapi`) and must not drift."""

import json

from app.openapi import document
from tests.conftest import ROOT


def test_committed_document_matches_the_app() -> None:
    committed = json.loads((ROOT / "openapi" / "openapi.json").read_text())
    assert committed == json.loads(json.dumps(document())), (
        "openapi/openapi.json is stale: run `spbridge openapi` and commit the result"
    )


def test_every_operation_is_documented() -> None:
    for path, item in document()["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            assert operation.get("summary"), where
            assert operation.get("description"), where
            assert operation.get("operationId"), where
            assert operation.get("tags"), where
            if path.startswith("/api/") or (path.startswith("/fhir/") and path != "/fhir/metadata"):
                assert "401" in operation["responses"], where
