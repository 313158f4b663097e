"""`esl import` and the API routes the technician's CLI added (``POST /import``, label history),
against a real server over HTTP; every API answer here is checked against the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from eslserver.catalogue import decode_csv, load_csv
from eslserver.cli import app
from tests.test_api_schema import ApiClient, add_label, add_products, api, wait_rendered  # noqa: F401  (fixture)

CATALOGUE = (
    "sku;name;price;ean;unit_size;unit_measure;label;model\n"             # line 1
    "PL1;Żubrówka Biała 0,5 l;29,99;5900000000015;500;ml;AA:00:00:00:00:01;2.9-bwry\n"  # 2
    "PL2;\"Gęsty jogurt\nnaturalny\";3,49;;400;g;aa-00-00-00-00-02;2.9-bwry\n"  # 3-4 (a quoted line break)
    "PL3;Źródlana woda;abc;;;;;\n"                                         # 5: bad price
    ";Bez SKU;1,00;;;;;\n"                                                 # 6: no sku
    "PL4;Łosoś wędzony;24,90;;;;zz:zz;\n"                                  # 7: bad MAC
    "PL1;Żubrówka Biała 0,5 l;29,99;5900000000015;500;ml;AA:00:00:00:00:03;2.9-bwry\n"  # 8: same product, 2nd label
    "PL1;Żubrówka inna;31,99;;;;;\n"                                       # 9: same sku, other values
    "PL5;Ćwikła z chrzanem;6,99;;;;AA:00:00:00:00:01;\n"                   # 10: label already on PL1
    "PL6;Śledź w oleju;8,99;;;;AA:00:00:00:00:09;\n"                       # 11: unknown label, no model
    "PL2;\"Gęsty jogurt\nnaturalny\";3,49;;400;g;aa-00-00-00-00-02;2.9-bwry\n"  # 12-13: exact duplicate
    "PL7;Kiełbasa;1;2;3;4;5;6;7\n"                                         # 14: too many cells
)
REJECTED = {5: "price", 6: "sku", 7: "label", 9: "sku", 10: "label", 11: "label", 14: "row"}


class Cli:
    def __init__(self, api: ApiClient, tmp_path: Path) -> None:
        self.env = {"ESL_SERVER": api.base, "ESL_TOKEN": api.tokens["tech"], "ESL_CLI_CONFIG": str(tmp_path / "x"),
                    "NO_COLOR": "1"}

    async def __call__(self, *args: str, code: int = 0) -> Result:
        result = await asyncio.to_thread(CliRunner().invoke, app, list(args), env=self.env, catch_exceptions=False)
        assert result.exit_code == code, (args, result.exit_code, result.stdout, result.stderr)
        return result


async def _snapshot(api: ApiClient) -> dict[str, Any]:
    """Everything an import may change."""
    db = api.server.db
    return {
        "products": [tuple(r) for r in await db.read("SELECT sku, record, seq, updated_at FROM products ORDER BY sku")],
        "history": (await db.read_one("SELECT COUNT(*) FROM price_history"))[0],
        "audit": (await db.read_one("SELECT COUNT(*) FROM audit"))[0],
        "labels": [tuple(r) for r in await db.read("SELECT mac, sku, template, model, updated_at, dirty FROM labels "
                                                   "ORDER BY mac")],
    }


async def test_import_cp1250_with_broken_rows_and_duplicates_then_again(api: ApiClient, tmp_path: Path) -> None:
    esl = Cli(api, tmp_path)
    path = tmp_path / "katalog.csv"
    path.write_bytes(CATALOGUE.encode("cp1250"))
    result = await esl("import", str(path), code=1)
    out = result.stdout
    assert out.splitlines()[0] == "katalog.csv (cp1250): 3 rows applied, 7 rejected, 1 duplicates skipped"
    assert "products: 2 created, 0 updated, 0 unchanged" in out
    assert "labels: 3 bound, 0 unchanged" in out
    assert "line 12: duplicate of line 3, skipped" in out
    rejected = [line for line in out.splitlines() if line.startswith("rejected ")]
    assert [int(line.split()[2].rstrip(":")) for line in rejected] == sorted(REJECTED)
    assert "rejected line 5: sku 'PL3': price='abc'" in out
    assert "rejected line 9: sku 'PL1' is already on line 2 with other values" in out
    assert "rejected line 10: label AA:00:00:00:00:01 is already given for sku 'PL1' on line 2" in out
    assert "rejected line 11: label AA:00:00:00:00:09 has not been seen by any gateway" in out
    # Polish names arrive intact; nothing of a rejected row was applied
    pl1 = (await api.call("GET", "/api/v1/products/PL1", role="tech")).json
    assert pl1["name"] == "Żubrówka Biała 0,5 l" and pl1["price"] == "29.99"
    assert sorted(m["mac"] for m in pl1["bound_labels"]) == ["AA:00:00:00:00:01", "AA:00:00:00:00:03"]
    pl2 = (await api.call("GET", "/api/v1/products/PL2", role="tech")).json
    assert pl2["name"] == "Gęsty jogurt naturalny"  # the quoted line break, as the renderer cleans names
    skus = [r[0] for r in (await _snapshot(api))["products"]]
    assert skus == ["PL1", "PL2"]  # PL4 (bad MAC) and PL6 (unknown label) were not half-applied
    # again: nothing changes (no label even marked for redrawing), everything is reported unchanged
    for mac in ("AA:00:00:00:00:01", "AA:00:00:00:00:02", "AA:00:00:00:00:03"):
        await wait_rendered(api, mac)
    before = await _snapshot(api)
    result = await esl("import", str(path), "--json", code=1)
    report = json.loads(result.stdout)
    assert await _snapshot(api) == before
    assert {r["product"] for r in report["results"]} == {"unchanged", "none"}
    assert {r["binding"] for r in report["results"]} == {"unchanged"}
    assert sorted(e["line"] for e in report["errors"]) == sorted(REJECTED)
    assert {e["line"]: e["field"] for e in report["errors"]} == REJECTED
    assert report["encoding"] == "cp1250" and report["duplicates"] == [{"line": 12, "same_as": 3}]


async def test_import_utf8_with_bom_and_a_price_update(api: ApiClient, tmp_path: Path) -> None:
    esl = Cli(api, tmp_path)
    await add_products(api, {"sku": "M1", "price": "2.00", "name": "Stara nazwa"})
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "sku,name,price\nM1,Mąka pszenna,2.49\nM2,Żurek,7.00\n".encode())
    result = await esl("import", str(path))
    assert result.stdout.splitlines()[:2] == ["bom.csv (utf-8-sig): 2 rows applied, 0 rejected, 0 duplicates skipped",
                                              "products: 1 created, 1 updated, 0 unchanged"]
    m1 = (await api.call("GET", "/api/v1/products/M1", role="tech")).json
    assert (m1["name"], m1["price"]) == ("Mąka pszenna", "2.49")
    assert [h["price"] for h in m1["history"]] == ["2.49", "2.00"]
    audit = (await api.call("GET", "/api/v1/audit", params={"action": "price.update", "target": "M1"})).json
    assert audit["items"][0]["actor"] == "test-tech"  # the import is audited under the token's name


async def test_import_file_errors_exit_2(api: ApiClient, tmp_path: Path) -> None:
    esl = Cli(api, tmp_path)
    path = tmp_path / "bad.csv"
    path.write_bytes(b"name,price\nx,1\n")
    assert "expected a 'sku' column" in (await esl("import", str(path), code=2)).stderr
    path.write_bytes(b"")
    assert "the file is empty" in (await esl("import", str(path), code=2)).stderr
    path.write_bytes("sku,price\nA,1\n".encode("utf-16"))
    assert "utf-16" in (await esl("import", str(path), "--json")).stdout
    path.write_bytes(b"sku,name,price\nA,\x81,1\n")  # not UTF-8, and 0x81 is undefined in cp1250
    assert "neither UTF-8 nor cp1250" in (await esl("import", str(path), code=2)).stderr


async def test_the_added_routes_answer_as_documented(api: ApiClient) -> None:
    await add_products(api, {"sku": "T1", "price": "2.49", "name": "Tour"})
    mac = "AA:BB:CC:00:00:01"
    await add_label(api, mac, "T1")
    rows = [{"line": 2, "fields": {"sku": "T2", "price": "1.00", "name": "Nowy"}, "label": mac},
            {"line": 3, "fields": {"sku": "T3", "price": "-1"}},
            {"line": 4, "fields": {"sku": "T9"}, "label": None}]
    reply = await api.call("POST", "/api/v1/import", role="tech", json={"rows": rows})
    assert reply.status == 200
    assert reply.json["results"] == [{"line": 2, "sku": "T2", "product": "created", "label": mac,
                                      "binding": "bound"}]
    assert [(e["line"], e["field"], e["error"]) for e in reply.json["errors"]] == [
        (3, "price", "invalid_value"), (4, "sku", "unknown_sku")]
    assert (await api.call("POST", "/api/v1/import", role="pos", json={"rows": []})).status == 403
    assert (await api.call("POST", "/api/v1/import", role="tech", json={"rows": {}})).error == "invalid_body"
    reply = await api.call("POST", "/api/v1/import", role="tech", json={"rows": [{"line": 0, "fields": {}}]})
    assert reply.status == 400 and "rows[0].line" in reply.json["detail"]
    reply = await api.call("POST", "/api/v1/import", role="tech", json={"rows": [{"fields": {"sku": "A"}}] * 1001})
    assert reply.status == 400 and reply.json["field"] == "rows"
    history = await api.call("GET", f"/api/v1/labels/{mac.lower().replace(':', '-')}/history", role="pos")
    assert history.status == 200
    assert [(h["action"], h["after"]["sku"]) for h in history.json["items"]] == [("label.bind", "T2"),
                                                                                  ("label.bind", "T1")]
    assert history.json["next_before"] is None
    page = await api.call("GET", f"/api/v1/labels/{mac}/history", params={"limit": "1"})
    assert len(page.json["items"]) == 1 and page.json["next_before"] == page.json["items"][0]["id"]
    older = await api.call("GET", f"/api/v1/labels/{mac}/history", params={"before": str(page.json["next_before"])})
    assert [h["after"]["sku"] for h in older.json["items"]] == ["T1"]
    assert (await api.call("GET", "/api/v1/labels/AA:BB:CC:00:00:02/history")).error == "unknown_label"
    assert (await api.call("GET", "/api/v1/labels/nope/history")).status == 400


def test_decode_prefers_utf8_and_falls_back_to_cp1250() -> None:
    text = "sku;name\nA;Zażółć gęślą jaźń\n"
    assert decode_csv(text.encode()) == (text, "utf-8")
    assert decode_csv(b"\xef\xbb\xbf" + text.encode()) == (text, "utf-8-sig")
    assert decode_csv(text.encode("cp1250")) == (text, "cp1250")
    assert decode_csv(text.encode("iso-8859-2"), "iso-8859-2") == (text, "iso-8859-2")
    for upper in ("RÓŻA;WÓŁKA\n", "ÓŁ"):  # cp1250 bytes that happen to be valid UTF-8 (Cyrillic)
        assert decode_csv(upper.encode("cp1250")) == (upper, "cp1250")
    for other in ("Привет „x” – 5 €", "Борщ український", "Ωmega ή"):  # real UTF-8 stays UTF-8
        assert decode_csv(other.encode()) == (other, "utf-8")
    parsed = load_csv(text.encode("cp1250"))
    assert parsed.encoding == "cp1250" and parsed.rows[0].fields == {"sku": "A", "name": "Zażółć gęślą jaźń"}
