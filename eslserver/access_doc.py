"""``docs/access.md``: who may do what, written out from the two tables that decide it.

The HTTP role matrix is the route table (`eslserver.api.table.all_routes`, each route's
roles) and the MQTT rules are `eslserver.mqtt_access.RULES`; the document is generated from
them (``python3 -m eslserver.access_doc > docs/access.md``) and a test keeps it equal, so the
page an integrator reads cannot drift from what the server enforces.
"""

from __future__ import annotations

from eslserver.api.table import all_routes
from eslserver.auth import ROLES
from eslserver.mqtt_access import RULES, Access, Grant, Role, Scope, Tree
from eslserver.topics import Kind

__all__ = ["access_markdown"]

_HEADER = """# Who may do what

Generated from the code (`python3 -m eslserver.access_doc > docs/access.md`); a test keeps
it equal to what the server enforces.

## HTTP API: token roles

Every request carries `Authorization: Bearer <token>`; a token has one role
(`esl tokens create --role …`). `admin` may do everything. *public* routes need no token;
*any* means every valid token. Everything a token changes is audited under its name.

A store's routes are served twice: on the plain paths for the configured store, and under
`/api/v1/stores/{store}/…` for every store of the chain (`esl stores list`). A token may be
restricted to some stores (`esl tokens create --store S …`): it sees and changes only those
(anything else: 403 `store_forbidden`; a label of another store is 404 `unknown_label`), may
read but not change what the whole chain shares (*chain, read*: templates), and may not use
what concerns every store (*chain*: the audit log, the live stream of every store).
"""

_MQTT = """
## MQTT: identities and topics

Every broker client logs in with its own identity (`esl gateways add STORE/ID`,
`esl identities add --role pos|integration --store STORE NAME`); anonymous clients are
refused. The user name says what it is: `server/INSTANCE`, `gateway/STORE/ID`,
`pos/STORE/NAME`, `integration/STORE/NAME`. Topics are those of the identity's own store
(`esl/{store}/…`); a gateway's are those of its own id only.
"""


def _who(roles: frozenset[str] | None) -> str:
    if roles is None:
        return "public"
    if not roles:
        return "any"
    return ", ".join(r for r in ROLES if r in roles or r == "admin")


def _topic(grant: Grant) -> str:
    if isinstance(grant.topic, Tree):
        return f"`{grant.topic.value}`"
    assert isinstance(grant.topic, Kind)
    part = "{own id}" if grant.scope is Scope.OWN else "+"
    value = grant.topic.value.replace("{gateway}", part).replace("{mac}", part)
    return f"`{{prefix}}/{{store}}/{value}`"


def access_markdown() -> str:
    """The whole document."""
    lines = [_HEADER, "| method | path | roles |", "|---|---|---|"]
    for route in sorted(all_routes(), key=lambda r: (r.path, r.method)):
        scope = {"shared": " (chain, read)", "whole": " (chain)"}.get(route.chain or "", "")
        lines.append(f"| {route.method} | `{route.path}` | {_who(route.roles)}{scope} |")
    lines += [_MQTT, "| identity | publishes | subscribes to |", "|---|---|---|"]
    for role in Role:
        grants = RULES[role]
        pub = ", ".join(_topic(g) for g in grants if Access.PUBLISH in g.access) or "nothing"
        sub = ", ".join(_topic(g) for g in grants if Access.SUBSCRIBE in g.access) or "nothing"
        lines.append(f"| {role.value} | {pub} | {sub} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(access_markdown(), end="")
