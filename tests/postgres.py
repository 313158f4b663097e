"""A PostgreSQL database of its own for a test, made on the machine's server and dropped after.

The server is ``ESL_TEST_POSTGRES`` (an admin URL; default ``postgresql://postgres@127.0.0.1:5432/postgres``,
the trust-authenticated local server that ``.ci/run`` starts where none answers). Each test gets
a database named ``esl_test_<random>``; nothing else on the server is touched.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

from pathlib import Path

import asyncpg
import pytest

from eslserver.db.database import Database, open_database

__all__ = ["ADMIN_URL", "database_for", "database_url", "engine_db", "fresh_database"]

ADMIN_URL = os.environ.get("ESL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """The URL of a new, empty database; dropped (whoever is still connected) afterwards."""
    name = f"esl_test_{secrets.token_hex(6)}"
    try:
        admin = await asyncpg.connect(ADMIN_URL, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        raise RuntimeError(f"these tests need PostgreSQL at {ADMIN_URL} (set ESL_TEST_POSTGRES): {exc}") from exc
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield _with_database(ADMIN_URL, name)
    finally:
        admin = await asyncpg.connect(ADMIN_URL, timeout=10)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@asynccontextmanager
async def database_for(engine: str, tmp_path: Path) -> AsyncIterator[str | None]:
    """The ``database_url`` setting of a test run on `engine`: None (SQLite in the data
    directory) or the URL of a fresh PostgreSQL database, dropped afterwards."""
    if engine == "sqlite":
        yield None
        return
    async with fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str | None]:
    """Once on SQLite (None: the data directory's file) and once on a fresh PostgreSQL database."""
    async with database_for(request.param, tmp_path) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """An open, migrated, empty database: once SQLite, once PostgreSQL."""
    async with database_for(request.param, tmp_path) as url:
        async with open_database(url if url is not None else tmp_path / "esl.db") as db:
            yield db
