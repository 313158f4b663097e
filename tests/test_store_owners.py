"""One owner per table: SQL lives in `eslserver.store` only, and each table is written by one module.

The rest of the server (domain modules, the HTTP API, the CLI, the web UI, the demo) calls the
named operations of `eslserver.store`; the engine (`eslserver.db`) holds no table's SQL. Two
places may speak SQL besides the store: the migrations (the schema itself) and the
gateway's own spool database (`eslserver/gateway/spool.py`, its one owner). A statement found
anywhere else fails the test with its file and line.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "eslserver"
STORE = PACKAGE / "store"
MIGRATIONS = PACKAGE / "db" / "migrations"
# the PostgreSQL engine writes its own schema-version table, as SQLite keeps ``user_version``
OWN_SQL = (STORE, MIGRATIONS, PACKAGE / "db" / "migrations_postgresql", PACKAGE / "db" / "postgres.py",
           PACKAGE / "gateway" / "spool.py")

SQL = re.compile(r"\bSELECT\b|\b(?:INSERT|REPLACE)\s+(?:OR\s+\w+\s+)?INTO\b|\bUPDATE\s+\S+\s+SET\b|\bDELETE\s+FROM\b")
"""A statement of SQL (HTTP's ``DELETE`` alone is not one)."""

WRITES = re.compile(r"\b(?:INSERT\s+(?:OR\s+\w+\s+)?INTO|REPLACE\s+INTO|UPDATE|DELETE\s+FROM)\s+(\w+)")

OWNERS = {
    "stores": "stores.py", "products": "products.py", "price_history": "products.py",
    "scheduled_updates": "products.py", "templates": "templates.py", "images": "images.py",
    "labels": "labels.py", "gateways": "gateways.py", "jobs": "jobs.py", "events": "events.py",
    "audit": "audit.py", "tokens": "tokens.py", "pos_update_ids": "pos_updates.py",
    "secrets_check": "secrets_check.py", "uploaded_images": "uploads.py",
    "mqtt_identities": "identities.py",
}
"""Each table and the one module of `eslserver.store` that holds its statements."""


def python_strings(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string literal, implicitly concatenated parts joined and the
    fields of an f-string standing as ``{}`` (so ``"UPDATE labels " "SET …"`` is one text)."""
    out: list[tuple[int, str]] = []
    parts: set[int] = set()  # the pieces of an f-string, read with it
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.JoinedStr):
            parts.update(id(v) for v in node.values)
            text = "".join(v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else "{}"
                           for v in node.values)
            out.append((node.lineno, text))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in parts:
            out.append((node.lineno, node.value))
    return sorted(out)


def sql_in(path: Path, text: str) -> list[tuple[int, str]]:
    """(line, statement) of the SQL in one file: in Python its string literals (comments
    are not code), elsewhere (JavaScript, HTML) any line."""
    if path.suffix == ".py":
        found = python_strings(text)
    else:
        found = list(enumerate(text.splitlines(), start=1))
    return [(line, " ".join(s.split())[:100]) for line, s in found if SQL.search(s)]


def owns_sql(path: Path) -> bool:
    return any(path == place or place in path.parents for place in OWN_SQL)


def files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                  and p.suffix in (".py", ".js", ".html", ".sql"))


def test_no_sql_outside_the_storage_layer() -> None:
    found = [f"{path.relative_to(ROOT)}:{line}: {statement}"
             for path in files() if not owns_sql(path)
             for line, statement in sql_in(path, path.read_text(encoding="utf-8"))]
    assert not found, "SQL outside eslserver/store/ (give the table's module an operation and call it):\n" + \
        "\n".join(found)


def test_the_search_finds_sql_however_it_is_written() -> None:
    source = '''
"""A docstring that mentions no statement, and a route: DELETE /api/v1/labels/{mac}/binding."""
method = "DELETE"
a = ("UPDATE labels "
     "SET dirty = 0 WHERE mac = ?")
b = f"SELECT {columns} FROM labels WHERE mac IN ({marks})"
c = "INSERT OR IGNORE INTO images (hash) VALUES (?)"
d = "delete from jobs"  # lower case is not how this code base writes SQL
e = "DELETE FROM jobs WHERE id = ?"
'''
    assert [line for line, _ in sql_in(Path("x.py"), source)] == [4, 6, 7, 9]
    assert [line for line, _ in sql_in(Path("x.js"), 'fetch(url, {method: "DELETE"});\nq = "SELECT 1";\n')] == [2]


def test_the_exceptions_are_only_the_store_the_migrations_and_the_spool() -> None:
    assert owns_sql(STORE / "labels.py") and owns_sql(MIGRATIONS / "0001_initial.sql")
    assert owns_sql(PACKAGE / "gateway" / "spool.py")
    assert not owns_sql(PACKAGE / "db" / "database.py") and not owns_sql(PACKAGE / "gateway" / "bridge.py")
    assert not owns_sql(PACKAGE / "api" / "routes_labels.py") and not owns_sql(PACKAGE / "storex.py")


def _tables() -> list[str]:
    names: list[str] = []
    for sql in sorted(MIGRATIONS.glob("*.sql")):
        names += re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", sql.read_text(encoding="utf-8"))
    return names


def test_every_table_has_an_owner() -> None:
    tables = _tables()
    assert "labels" in tables and "jobs" in tables
    assert [t for t in tables if t not in OWNERS] == [], "a new table needs its module in eslserver/store/"
    for table in tables:
        module = STORE / OWNERS[table]
        assert module.is_file(), f"{table}: no module {module.relative_to(ROOT)}"
        statements = " ".join(text for _, text in python_strings(module.read_text(encoding="utf-8")))
        assert re.search(rf"\b(?:FROM|INTO|UPDATE)\s+{table}\b", statements), \
            f"{table}: {module.name} has no statement on it"


@pytest.mark.parametrize("module", sorted(p.name for p in STORE.glob("*.py")))
def test_a_table_is_written_only_by_its_owner(module: str) -> None:
    """Reads may join another table (said in their docstrings); writes stay with the owner."""
    path = STORE / module
    wrong = [f"{module}:{line}: writes {table} (owned by {OWNERS.get(table)})"
             for line, text in python_strings(path.read_text(encoding="utf-8"))
             for table in WRITES.findall(text) if table in OWNERS and OWNERS[table] != module]
    assert not wrong, "\n".join(wrong)
