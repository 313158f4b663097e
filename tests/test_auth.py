"""Tokens and roles: storage, verification, revocation, the HTTP guard and `esl tokens`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sys
from pathlib import Path

import pytest

from eslserver.api.app import all_routes
from eslserver.auth import (
    ROLES, Actor, AuthError, UnknownTokenError, create_token, list_tokens, parse_token, revoke_token, verify_token,
)
from eslserver.db.database import Database
from eslserver.db.sqlite import SqliteDatabase
from tests.test_api_schema import ApiClient, api  # noqa: F401  (fixture)

TOKEN_RE = re.compile(r"^esl_[0-9a-f]{12}_[a-z2-7]{32}$")


@pytest.fixture
async def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with SqliteDatabase(tmp_path / "esl.db") as database:
        yield database


async def test_create_and_verify(db: Database) -> None:
    token = await create_token(db, "tech", "Anna")
    assert TOKEN_RE.match(token)
    assert await verify_token(db, token) == Actor("Anna", "tech")
    assert await verify_token(db, token + "x") is None
    assert await verify_token(db, "Bearer " + token) is None


async def test_only_the_hash_of_the_secret_is_stored(db: Database) -> None:
    token = await create_token(db, "pos")
    token_id, secret = parse_token(token)  # type: ignore[misc]
    row = await db.read_one("SELECT * FROM tokens WHERE id = ?", (token_id,))
    assert row is not None
    assert secret not in json.dumps(dict(row))
    assert row["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert row["name"] == "pos"  # the name defaults to the role


async def test_a_wrong_secret_with_a_real_id_is_refused(db: Database) -> None:
    token = await create_token(db, "admin")
    token_id, secret = parse_token(token)  # type: ignore[misc]
    other = "a" * 32 if secret != "a" * 32 else "b" * 32
    assert await verify_token(db, f"esl_{token_id}_{other}") is None
    assert await verify_token(db, f"esl_{'0' * 12}_{secret}") is None


@pytest.mark.parametrize("bad", ["", "esl_", "esl_" + "a" * 12 + "_" + "a" * 32 + "\n", "esl_abc_def", "ESL_" + "a" * 12 + "_" + "a" * 32,
                                 "esl_" + "g" * 12 + "_" + "a" * 32, "esl_" + "a" * 12 + "_" + "A" * 32])
async def test_malformed_tokens_are_refused(db: Database, bad: str) -> None:
    assert parse_token(bad) is None
    assert await verify_token(db, bad) is None


async def test_revoke_is_immediate_and_idempotent(db: Database) -> None:
    token = await create_token(db, "merchandiser", "Ewa")
    token_id = token.split("_")[1]
    first = await revoke_token(db, token_id)
    assert first.revoked_at is not None
    assert await verify_token(db, token) is None
    again = await revoke_token(db, token)  # the whole token works too
    assert again.revoked_at == first.revoked_at
    actions = [r["action"] for r in await db.read("SELECT action FROM audit ORDER BY id")]
    assert actions == ["token.create", "token.revoke"]


async def test_bad_input_names_the_field_and_value(db: Database) -> None:
    with pytest.raises(AuthError, match=r"role: expected one of pos, merchandiser, tech, admin, got 'root'"):
        await create_token(db, "root")
    with pytest.raises(AuthError, match=r"name: expected"):
        await create_token(db, "pos", "")
    with pytest.raises(UnknownTokenError, match=r"no token '0123456789ab'"):
        await revoke_token(db, "0123456789ab")
    with pytest.raises(AuthError, match=r"id: expected 12 hex digits"):
        await revoke_token(db, "nope")


async def test_list_shows_no_secrets(db: Database) -> None:
    tokens = [await create_token(db, role) for role in ROLES]
    await revoke_token(db, tokens[0])
    listed = await list_tokens(db)
    assert [t.role for t in listed] == list(ROLES)
    assert [t.revoked_at is not None for t in listed] == [True, False, False, False]
    assert len(await list_tokens(db, include_revoked=False)) == 3
    text = json.dumps([t.to_json() for t in listed])
    assert not any(tok.split("_")[2] in text for tok in tokens)


def test_admin_may_do_everything() -> None:
    assert Actor("a", "admin").may({"tech"})
    assert Actor("a", "tech").may({"tech"})
    assert not Actor("a", "pos").may({"tech", "merchandiser"})


# --- over HTTP ----------------------------------------------------------------------------------

def _concrete(path: str) -> str:
    return (path.replace("{store}", "demo").replace("{mac}", "AA:BB:CC:DD:EE:01").replace("{sku}", "X").replace("{name}", "shelf-2.9")
            .replace("{hash}", "0" * 16).replace("{digest}", "0" * 64))


async def test_every_guarded_route_answers_401_without_a_valid_token(api: ApiClient) -> None:
    revoked = await create_token(api.server.db, "admin")
    await revoke_token(api.server.db, revoked)
    for route in all_routes():
        if route.roles is None:
            continue
        path = _concrete(route.path)
        reply = await api.call(route.method, path, role=None)
        assert reply.status == 401 and reply.error == "missing_token", (route.path, reply.json)
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
        for bad in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer esl_nonsense", f"Bearer {revoked}"):
            reply = await api.call(route.method, path, role=None, headers={"Authorization": bad})
            assert reply.status == 401 and reply.error == "invalid_token", (route.path, bad, reply.json)


async def test_every_role_restricted_route_answers_403_to_other_roles(api: ApiClient) -> None:
    checked = 0
    for route in all_routes():
        if not route.roles:
            continue
        for role in ROLES:
            if role == "admin" or role in route.roles:
                continue
            reply = await api.call(route.method, _concrete(route.path), role=role, json={})
            assert reply.status == 403 and reply.error == "forbidden", (route.path, role, reply.json)
            assert repr(role) in reply.json["detail"] and "admin" in reply.json["detail"]
            checked += 1
    assert checked >= 10


async def test_public_routes_need_no_token(api: ApiClient) -> None:
    for path in ("/healthz", "/metrics", "/api/v1/openapi.json"):
        reply = await api.call("GET", path, role=None)
        assert reply.status == 200, path


# --- esl tokens ----------------------------------------------------------------------------------

async def _esl(cwd: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESL_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from eslserver.cli import main; main()", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_tokens_work_beside_a_running_server(api: ApiClient, tmp_path: Path) -> None:
    data = str(api.server.settings.data_dir)
    code, out, err = await _esl(tmp_path, "tokens", "create", "--role", "tech", "--name", "Jan", "--data", data)
    assert code == 0, err
    token = out.strip()
    assert out == token + "\n" and TOKEN_RE.match(token)  # stdout is the token only
    reply = await api.call("GET", "/api/v1/labels", token=token)
    assert reply.status == 200

    code, out, err = await _esl(tmp_path, "tokens", "list", "--json", "--data", data)
    assert code == 0, err
    listed = {t["id"]: t for t in json.loads(out)}
    token_id = token.split("_")[1]
    assert listed[token_id]["role"] == "tech" and listed[token_id]["name"] == "Jan"
    assert token.split("_")[2] not in out

    code, out, err = await _esl(tmp_path, "tokens", "revoke", token_id, "--data", data)
    assert code == 0, err
    reply = await api.call("GET", "/api/v1/labels", token=token)
    assert reply.status == 401 and reply.error == "invalid_token"


async def test_cli_refuses_a_bad_role_and_an_unknown_id(tmp_path: Path) -> None:
    code, out, err = await _esl(tmp_path, "tokens", "create", "--role", "boss", "--data", str(tmp_path / "d"))
    assert code == 2 and out == "" and "--role: expected one of pos, merchandiser, tech, admin, got 'boss'" in err
    code, out, err = await _esl(tmp_path, "tokens", "create", "--role", "pos", "--data", str(tmp_path / "d"))
    assert code == 1 and out == "" and not (tmp_path / "d").exists()  # see tests/test_cli_errors.py
    code, out, err = await _esl(tmp_path, "tokens", "create", "--role", "pos", "--data", str(tmp_path / "d"), "--init")
    assert code == 0 and TOKEN_RE.match(out.strip())
    code, out, err = await _esl(tmp_path, "tokens", "revoke", "0123456789ab", "--data", str(tmp_path / "d"))
    assert code == 2 and "no token '0123456789ab'" in err
