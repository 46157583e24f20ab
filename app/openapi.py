"""The OpenAPI document as committed under openapi/ (a test fails when the two drift)."""

from __future__ import annotations

from typing import Any

from app.config import Settings


def document() -> dict[str, Any]:
    from app.main import create_app

    # Fixed settings: the document must not depend on the machine that generates it.
    spec: dict[str, Any] = create_app(
        Settings(database_url="sqlite+aiosqlite:///:memory:")
    ).openapi()
    return spec
