"""docs/access.md is what the server enforces: generated from the route table and the MQTT rules."""

from __future__ import annotations

from pathlib import Path

from eslserver.access_doc import access_markdown
from eslserver.api.table import all_routes

DOC = Path(__file__).resolve().parents[1] / "docs" / "access.md"


def test_the_access_document_is_the_one_the_code_generates() -> None:
    assert DOC.read_text(encoding="utf-8") == access_markdown(), (
        "docs/access.md is out of date: python3 -m eslserver.access_doc > docs/access.md")


def test_every_route_is_in_the_document_with_its_roles() -> None:
    text = DOC.read_text(encoding="utf-8")
    for route in all_routes():
        row = next((line for line in text.splitlines() if line.startswith(f"| {route.method} | `{route.path}` |")),
                   None)
        assert row is not None, (route.method, route.path)
        if route.roles:
            assert all(role in row for role in route.roles) and "admin" in row, row
