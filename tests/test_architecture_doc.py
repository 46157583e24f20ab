"""docs/ARCHITECTURE.md stays true: the files it names exist, every package and module of app/ is
on its map, and its layers are the import contracts' layers."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import ROOT

DOC = (ROOT / "docs" / "ARCHITECTURE.md").read_text()


def test_every_file_it_names_exists() -> None:
    named = set(re.findall(r"`((?:app|adapters|tests|fhir|docs|bench|openapi)/[\w./<>-]+)`", DOC))
    named |= set(re.findall(r"`(pyproject\.toml|README\.md|\.ci/run)`", DOC))
    assert named, "the page names no files"
    missing = sorted(
        path for path in named if "<" not in path and not (ROOT / path.rstrip("/")).exists()
    )
    assert not missing, missing


def test_every_package_and_module_of_app_is_on_the_map() -> None:
    table = DOC.split("## The packages, top down", 1)[1].split("<!-- layers -->", 1)[0]
    on_map = set(re.findall(r"`(\w+)`", table))
    present = {
        path.stem if path.is_file() else path.name
        for path in (ROOT / "app").iterdir()
        if (path.suffix == ".py" and path.stem != "__init__")
        or (path.is_dir() and (path / "__init__.py").exists())
    }
    assert present - on_map == set(), "not on the map: " + ", ".join(sorted(present - on_map))
    assert on_map & present == present


def test_its_layers_are_the_contracts() -> None:
    written = DOC.split("<!-- layers -->", 1)[1].split("<!-- /layers -->", 1)[0]
    listed = [line.strip() for line in written.strip().strip("`").splitlines() if line.strip()]
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [
        contract["layers"]
        for contract in contracts["contracts"]
        if contract.get("containers") == ["app"]
    ]
    assert listed == layers
