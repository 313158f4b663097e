"""The technician's CLI, piece by piece: scans, where the server and token come from, the
HTTP client's errors, the CSV parser's duplicate and line rules, and shell completion."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from eslserver.catalogue import CatalogueError, load_csv, parse_csv
from eslserver.cli import app
from eslserver.cli.tech_common import config_path, resolve_connection
from eslserver.cli.tech_scan import gtin_valid, label_mac, product_keys
from eslserver.client import ApiError, Client, ClientError
from tests.test_api_schema import ApiClient, add_products, api  # noqa: F401  (fixture)

# --- scans -----------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=6, max_size=6), st.sampled_from(["", "ESL", "ESL-", "L:", "esl_"]), st.booleans())
def test_every_spelling_of_a_mac_reads_as_that_mac(raw: bytes, prefix: str, lower: bool) -> None:
    canonical = ":".join(f"{b:02X}" for b in raw)
    hexes = raw.hex()
    forms = [canonical, canonical.replace(":", "-"), hexes, f"{hexes[:4]}.{hexes[4:8]}.{hexes[8:]}"]
    for form in forms:
        form = form.lower() if lower else form.upper()
        assert label_mac(prefix + form) == canonical, prefix + form
        assert label_mac(f"https://store.example/l/{prefix}{form}?x=1") == canonical
    assert label_mac(f"  {canonical}\r\n") == canonical


@pytest.mark.parametrize("scan", ["", "zzz", "AA:BB:CC:DD:EE", "AA:BB-CC:DD:EE:FF", "AABBCCDDEEFF00",
                                  "5901234123457", "TOOLONGPREFIX-AABBCCDDEEFF", "AA:BB:CC:DD:EE:GG"])
def test_what_is_not_a_label_scan(scan: str) -> None:
    assert label_mac(scan) is None


def test_gtins_and_product_keys() -> None:
    assert gtin_valid("5901234123457") and gtin_valid("96385074") and gtin_valid("036000291452")
    assert not gtin_valid("5901234123458") and not gtin_valid("59012341234") and not gtin_valid("590123412345x")
    assert product_keys("036000291452") == ("036000291452", "0036000291452")  # UPC-A also as its EAN-13
    assert product_keys(" 100 ") == ("100",)


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=12, max_size=12, alphabet="0123456789"))
def test_one_gtin_check_digit_in_ten_is_right(body: str) -> None:
    right = [d for d in "0123456789" if gtin_valid(body + d)]
    assert len(right) == 1


# --- where the server and the token come from ----------------------------------------------------

def test_flags_beat_environment_beat_config_file(tmp_path: Path) -> None:
    config = tmp_path / "cli.toml"
    config.write_text('server = "http://from-file:1"\ntoken = "esl_file"\n')
    env = {"ESL_CLI_CONFIG": str(config)}
    conn = resolve_connection(None, None, env)
    assert (conn.server, conn.token, conn.server_from) == ("http://from-file:1", "esl_file", str(config))
    env |= {"ESL_SERVER": "http://from-env:2", "ESL_TOKEN": "esl_env"}
    conn = resolve_connection(None, None, env)
    assert (conn.server, conn.token, conn.token_from) == ("http://from-env:2", "esl_env", "ESL_TOKEN")
    conn = resolve_connection("http://flag:3", "esl_flag", env)
    assert (conn.server, conn.token, conn.server_from) == ("http://flag:3", "esl_flag", "--server")
    conn = resolve_connection(None, None, {"ESL_CLI_CONFIG": str(tmp_path / "missing.toml")})
    assert (conn.server, conn.token, conn.server_from) == ("http://127.0.0.1:8080", None, "default")


def test_config_file_location_and_bad_files(tmp_path: Path) -> None:
    assert config_path({"HOME": "/home/anna"}) == Path("/home/anna/.config/eslserver/cli.toml")
    assert config_path({"XDG_CONFIG_HOME": "/x", "HOME": "/h"}) == Path("/x/eslserver/cli.toml")
    bad = tmp_path / "cli.toml"
    bad.write_text("server = \n")
    with pytest.raises(ValueError, match="cannot be read as TOML"):
        resolve_connection(None, None, {"ESL_CLI_CONFIG": str(bad)})
    bad.write_text('servr = "http://x"\n')
    with pytest.raises(ValueError, match="unknown key 'servr'"):
        resolve_connection(None, None, {"ESL_CLI_CONFIG": str(bad)})


def _cli(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, args, env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


async def test_token_from_the_config_file_and_token_errors(api: ApiClient, tmp_path: Path) -> None:
    config = tmp_path / "cli.toml"
    config.write_text(f'server = "{api.base}"\ntoken = "{api.tokens["tech"]}"\n')
    env = {"ESL_CLI_CONFIG": str(config), "ESL_SERVER": "", "ESL_TOKEN": ""}
    code, out, err = await asyncio.to_thread(_cli, ["gateways", "--json"], env)
    assert (code, out.strip()) == (0, "[]"), err
    code, out, err = await asyncio.to_thread(_cli, ["labels", "--token", "esl_000000000000_" + "a" * 32], env)
    assert code == 1 and "the token is unknown, revoked or malformed — check --token" in err
    env["ESL_CLI_CONFIG"] = str(tmp_path / "none.toml")
    code, out, err = await asyncio.to_thread(_cli, ["labels", "--server", api.base], env)
    assert code == 2 and "no token: pass --token, set ESL_TOKEN" in err
    code, out, err = await asyncio.to_thread(_cli, ["labels", "--server", "ftp://x", "--token", "t"], env)
    assert code == 2 and "server: expected a URL such as http://127.0.0.1:8080, got 'ftp://x'" in err
    code, out, err = await asyncio.to_thread(_cli, ["pair", "--token", api.tokens["pos"], "--server", api.base,
                                                    "AA:BB:CC:DD:EE:FF", "X"], env)
    assert code == 1 and "unknown label AA:BB:CC:DD:EE:FF" in err
    code, out, err = await asyncio.to_thread(_cli, ["pair", "AA:BB:CC:DD:EE:FF"], env)
    assert code == 2 and "give both LABEL and PRODUCT" in err


async def test_a_label_no_gateway_reported_is_registered_with_its_model(api: ApiClient, tmp_path: Path) -> None:
    await add_products(api, {"sku": "T1", "price": "2.49", "name": "Tour"})
    env = {"ESL_CLI_CONFIG": str(tmp_path / "none.toml"), "ESL_SERVER": api.base, "ESL_TOKEN": api.tokens["tech"]}
    code, out, err = await asyncio.to_thread(_cli, ["pair", "aabbcc000010", "T1", "--model", "2.9-bwry"], env)
    assert code == 0 and out.startswith("paired AA:BB:CC:00:00:10 → T1 Tour 2.49 PLN"), err
    result = await asyncio.to_thread(CliRunner().invoke, app, ["pair", "--model", "2.9-bwry"],
                                     input="AA:BB:CC:00:00:11\nT1\n", env=env, catch_exceptions=False)
    assert result.exit_code == 0 and "paired AA:BB:CC:00:00:11 → T1" in result.stdout, result.stderr
    for mac in ("AA:BB:CC:00:00:10", "AA:BB:CC:00:00:11"):
        label = (await api.call("GET", f"/api/v1/labels/{mac}")).json
        assert (label["model"], label["sku"]) == ("2.9-bwry", "T1")


# --- the client's errors -----------------------------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_server_is_a_client_error_naming_it() -> None:
    port = _closed_port()
    with Client(f"http://127.0.0.1:{port}", "t") as client, pytest.raises(ClientError) as info:
        client.me()
    assert not isinstance(info.value, ApiError)
    assert f"cannot reach http://127.0.0.1:{port}" in str(info.value)
    code, _, err = _cli(["labels", "--server", f"http://127.0.0.1:{port}", "--token", "t"],
                        {"ESL_CLI_CONFIG": "/nonexistent"})
    assert code == 1 and f"error: cannot reach http://127.0.0.1:{port}" in err


class _Odd(BaseHTTPRequestHandler):
    """A server that is not ours: plain text errors, HTML successes."""

    def do_GET(self) -> None:
        status, ctype, body = {"/api/v1/me": (502, "text/plain", b"Bad Gateway from the proxy"),
                               "/api/v1/gateways": (200, "text/html", b"<html>login</html>"),
                               "/api/v1/labels": (200, "application/json", b"{not json")}[self.path.split("?")[0]]
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def odd_server() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Odd)
    thread = threading.Thread(target=server.serve_forever, name="odd-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_answers_that_are_not_the_apis(odd_server: str) -> None:
    with Client(odd_server + "/", "t") as client:
        with pytest.raises(ApiError) as info:
            client.me()
        assert (info.value.code, info.value.status, info.value.detail) == ("http_502", 502, "Bad Gateway from the proxy")
        with pytest.raises(ClientError, match="expected JSON, got 'text/html'"):
            client.gateways()
        with pytest.raises(ClientError, match="HTTP 200 with a body that is not JSON"):
            list(client.labels())


async def test_api_errors_carry_code_detail_status_and_field(api: ApiClient) -> None:
    def calls() -> None:
        with Client(api.base, api.tokens["tech"]) as client:
            with pytest.raises(ApiError) as info:
                client.label("AA:BB:CC:DD:EE:01")
            assert (info.value.code, info.value.status, info.value.field) == ("unknown_label", 404, "mac")
            assert info.value.detail == "label AA:BB:CC:DD:EE:01 is not known"
            with pytest.raises(ApiError) as info:
                client.flash("AA:BB:CC:DD:EE:01", 0)
            assert (info.value.code, info.value.status, info.value.field) == ("invalid_body", 400, "seconds")
            assert client.me() == {"name": "test-tech", "role": "tech", "stores": None}  # the same connection, still usable
        with Client(api.base, api.tokens["pos"]) as client, pytest.raises(ApiError) as info:
            client.unbind("AA:BB:CC:DD:EE:01")
        assert (info.value.code, info.value.status) == ("forbidden", 403)

    await asyncio.to_thread(calls)


# --- CSV rules --------------------------------------------------------------------------------------

def test_csv_line_numbers_duplicates_and_conflicts() -> None:
    text = ("SKU,price,name,label\n"
            "A,1,\"two\nlines\",aa:00:00:00:00:01\n"   # 2-3
            "A,1,\"two\nlines\",aa:00:00:00:00:02\n"   # 4-5: the same product, another label
            "A,1,\"two\nlines\",AA:00:00:00:00:02\n"   # 6-7: the same again: a duplicate
            "\n"                                        # 8: blank, ignored
            "B,2,,AA:00:00:00:00:01\n"                  # 9: that label is A's
            "A,3,,\n"                                   # 10: A with another price
            "C,,,\n")                                   # 11: C alone: the server decides
    parsed = parse_csv(text)
    assert [(r.line, dict(r.fields), r.label) for r in parsed.rows] == [
        (2, {"sku": "A", "price": "1", "name": "two\nlines"}, "AA:00:00:00:00:01"),
        (4, {"sku": "A"}, "AA:00:00:00:00:02"),
        (11, {"sku": "C"}, None)]
    assert parsed.duplicates == ((6, 4),)
    assert [(e.line, e.error) for e in parsed.errors] == [(9, "duplicate_label"), (10, "duplicate_sku")]


_CELL = st.text(alphabet=st.sampled_from("abcXYZ019 ,;\t\"\n'ąćęłńóśźżĄĆĘŁŃÓŚŹŻ.-"), max_size=12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.from_regex(r"[A-Z0-9]{1,6}", fullmatch=True), _CELL, _CELL), max_size=8, unique_by=lambda r: r[0]),
       st.sampled_from([";", ",", "\t"]), st.sampled_from(["utf-8", "utf-8-sig", "cp1250"]),
       st.sampled_from(["\n", "\r\n"]))
def test_csv_rows_come_back_with_their_cells_and_first_lines(
        rows: list[tuple[str, str, str]], delimiter: str, encoding: str, newline: str) -> None:
    out = io.StringIO(newline="")
    writer = csv.writer(out, delimiter=delimiter, lineterminator=newline)
    writer.writerow(["sku", "name", "attr.origin"])
    writer.writerows(rows)
    parsed = load_csv(out.getvalue().encode(encoding))
    if encoding != "cp1250" or not out.getvalue().isascii():
        assert parsed.encoding == encoding
    assert not parsed.errors and not parsed.duplicates
    line, expected = 2, []
    for sku, name, origin in rows:
        fields: dict[str, object] = {"sku": sku}
        if name.strip():
            fields["name"] = name.strip()
        if origin.strip():
            fields["attributes"] = {"origin": origin.strip()}
        expected.append((line, fields))
        line += 1 + sum(cell.count("\n") for cell in (sku, name, origin))
    assert [(r.line, dict(r.fields)) for r in parsed.rows] == expected


def test_csv_header_problems() -> None:
    with pytest.raises(CatalogueError, match="column 'price' is given twice"):
        parse_csv("sku,price,Price\nA,1,2\n")
    with pytest.raises(CatalogueError, match="expected a 'sku' column"):
        parse_csv("ean,price\n1,2\n")
    parsed = parse_csv("sku;price;label;mac\nA;1;AA:00:00:00:00:01;AA:00:00:00:00:01\n")
    assert [e.detail for e in parsed.errors] == ["line 2: give the label in 'label' or 'mac', not both"]


# --- shell completion ---------------------------------------------------------------------------------

def _complete(words: str, cword: int) -> list[str]:
    env = {**os.environ, "_ESL_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    out = subprocess.run([sys.executable, "-c", "from eslserver.cli import app; app(prog_name='esl')"], env=env,
                         capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.split()


def test_shell_completion_completes_commands_options_and_states() -> None:
    assert _complete("esl lab", 1) == ["labels", "label"]
    assert {"--unpaired", "--battery-below", "--stale"} <= set(_complete("esl labels --", 2))
    assert _complete("esl labels --state o", 3) == ["ok", "offline"]
    script = CliRunner().invoke(app, ["--show-completion", "bash"], env={"SHELL": "/bin/bash"})
    assert script.exit_code == 0 and "_ESL_COMPLETE=complete_bash" in script.stdout
