"""The access rules as a table (`eslserver.mqtt_access.RULES`), the identities' names, topic
matching, Mosquitto's password hash and files, and the discovery rate limit.

The table is checked against the MQTT contract written out here (DESIGN's topic table: who
sends, who reads): every topic of the contract is covered, in the right direction, and nothing
else is granted. The password hash is checked against ``mosquitto_passwd`` itself; the files
against a real Mosquitto in tests/test_security_mqtt.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eslserver.config import ConfigError, load_settings
from eslserver.mqtt_access import (
    RULES,
    Access,
    AccessSnapshot,
    Identity,
    IdentityError,
    Role,
    Tree,
    covers,
    matches,
)
from eslserver.mqtt_passwords import PasswordHashError, hash_password, new_password, verify_password
from eslserver.ratelimit import Buckets
from eslserver.topics import Kind, Topics
from tests.brokers import MOSQUITTO_PASSWD

P, S = Access.PUBLISH, Access.SUBSCRIBE
CONTRACT: dict[Kind, tuple[frozenset[Role], frozenset[Role]]] = {
    # kind: (who publishes besides the server, who reads besides the server)
    Kind.POS_PRICES: (frozenset({Role.POS}), frozenset()),
    Kind.POS_ERRORS: (frozenset(), frozenset({Role.POS})),
    Kind.POS_ACKS: (frozenset(), frozenset({Role.POS})),
    Kind.POS_STOCK: (frozenset({Role.POS, Role.INTEGRATION}), frozenset()),
    Kind.PICKS: (frozenset({Role.INTEGRATION}), frozenset()),
    Kind.GATEWAY_JOBS: (frozenset(), frozenset({Role.GATEWAY})),
    Kind.GATEWAY_EVENTS: (frozenset({Role.GATEWAY}), frozenset()),
    Kind.GATEWAY_STATUS: (frozenset({Role.GATEWAY}), frozenset()),
    Kind.LABEL_STATE: (frozenset(), frozenset({Role.INTEGRATION})),
}
"""DESIGN's MQTT topics: the server reads what others send and sends what others read."""

T = Topics("esl", "s042")
OTHER = Topics("esl", "s999")
HASH = hash_password("pw")
GW1 = Identity(Role.GATEWAY, "gw1", "s042")
GW2 = Identity(Role.GATEWAY, "gw2", "s042")
TILL = Identity(Role.POS, "till-1", "s042")
SHOP = Identity(Role.INTEGRATION, "shop", "s042")
SERVER = Identity(Role.SERVER, "server")
RULES_NOW = AccessSnapshot("esl", [(i, HASH) for i in (GW1, GW2, TILL, SHOP, SERVER)])


def _topics_of(kind: Kind) -> list[str]:
    """Concrete topics of `kind`: of the store, for gw1, gw2 or a label, and of another store."""
    if kind.slot == "gateway":
        return [str(T.topic(kind, "gw1")), str(T.topic(kind, "gw2")), str(OTHER.topic(kind, "gw1"))]
    if kind.slot == "mac":
        return [str(T.topic(kind, "AA:BB:CC:00:00:01")), str(OTHER.topic(kind, "AA:BB:CC:00:00:01"))]
    return [str(T.topic(kind)), str(OTHER.topic(kind))]


def test_the_contract_names_every_kind_of_topic() -> None:
    assert set(CONTRACT) == set(Kind)


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.name)
def test_every_topic_is_covered_in_its_direction_and_nothing_else(kind: Kind) -> None:
    """For each identity and each concrete topic of `kind`, publish and receive are allowed
    exactly as the contract says: its own store only, a gateway its own topics only."""
    publishers, readers = CONTRACT[kind]
    for identity in (GW1, TILL, SHOP, SERVER):
        for topic in _topics_of(kind):
            own_store = topic.startswith("esl/s042/")
            own_gateway = kind.slot != "gateway" or "/gw1/" in topic
            mine = own_store and own_gateway
            expect_publish = identity.role is Role.SERVER or (identity.role in publishers and mine)
            expect_read = identity.role is Role.SERVER or (identity.role in readers and mine)
            assert RULES_NOW.may_publish(identity.username, topic) is expect_publish, (identity.username, topic)
            assert RULES_NOW.may_receive(identity.username, topic) is expect_read, (identity.username, topic)
            assert RULES_NOW.may_subscribe(identity.username, topic) is expect_read, (identity.username, topic)


def test_the_table_grants_only_contract_topics_and_home_assistant() -> None:
    for role, grants in RULES.items():
        for grant in grants:
            if isinstance(grant.topic, Tree):
                assert grant.topic is Tree.HOME_ASSISTANT or role is Role.SERVER, (role, grant)
                continue
            publishers, readers = CONTRACT[grant.topic]
            assert (P not in grant.access or role in publishers) and (S not in grant.access or role in readers), \
                (role, grant)
    assert {g.topic for g in RULES[Role.SERVER]} == {Tree.PREFIX, Tree.HOME_ASSISTANT}
    assert RULES_NOW.may_receive(SHOP.username, "homeassistant/sensor/esl_aa/config")
    assert not RULES_NOW.may_publish(SHOP.username, "homeassistant/sensor/esl_aa/config")
    assert RULES_NOW.may_publish(SERVER.username, "homeassistant/sensor/esl_aa/config")
    assert not RULES_NOW.may_receive(TILL.username, "homeassistant/sensor/esl_aa/config")


def test_each_identity_gets_exactly_its_filters() -> None:
    assert GW1.filters("esl") == {P: ("esl/s042/gateway/gw1/events", "esl/s042/gateway/gw1/status"),
                                  S: ("esl/s042/gateway/gw1/jobs",)}
    assert TILL.filters("esl") == {P: ("esl/s042/pos/prices", "esl/s042/pos/stock"),
                                   S: ("esl/s042/pos/errors", "esl/s042/pos/acks")}
    assert SHOP.filters("esl") == {P: ("esl/s042/picks", "esl/s042/pos/stock"),
                                   S: ("esl/s042/label/+/state", "homeassistant/#")}
    assert SERVER.filters("chain") == {P: ("chain/#", "homeassistant/#"), S: ("chain/#", "homeassistant/#")}


@pytest.mark.parametrize(("who", "topic_filter", "allowed"), [
    (GW1, "esl/s042/gateway/gw1/jobs", True),
    (GW1, "esl/s042/gateway/+/jobs", False),   # every gateway's jobs
    (GW1, "esl/s042/gateway/gw2/jobs", False),
    (GW1, "esl/s042/gateway/gw1/#", False),    # its own events too: not a reader of them
    (GW1, "#", False),
    (TILL, "esl/s042/pos/+", False),           # would include pos/prices of other tills
    (TILL, "esl/s042/pos/errors", True),
    (SHOP, "esl/s042/label/+/state", True),
    (SHOP, "esl/s042/label/#", False),
    (SHOP, "esl/+/label/+/state", False),      # another store's labels
    (SERVER, "$share/eslserver/esl/+/gateway/+/events", True),
    (SERVER, "$share/eslserver", False),
    (SERVER, "#", False),
])
def test_a_subscription_is_allowed_only_when_every_topic_it_matches_is(who: Identity, topic_filter: str,
                                                                     allowed: bool) -> None:
    assert RULES_NOW.may_subscribe(who.username, topic_filter) is allowed


def test_anonymous_unknown_and_wrong_passwords_get_nothing() -> None:
    for user in (None, "", "nobody", "gateway/s042/gw3"):
        assert RULES_NOW.verify(user, "pw") is None
        assert not RULES_NOW.may_publish(user, T.pos_prices)
        assert not RULES_NOW.may_receive(user, T.pos_errors)
        assert not RULES_NOW.may_subscribe(user, T.pos_errors)
    assert RULES_NOW.verify(TILL.username, "pw") == TILL
    assert RULES_NOW.verify(TILL.username, b"pw") == TILL
    assert RULES_NOW.verify(TILL.username, "Pw") is None
    assert RULES_NOW.verify(TILL.username, None) is None
    assert RULES_NOW.verify(TILL.username, b"\xff") is None
    assert RULES_NOW.is_gateway("s042", "gw1") and not RULES_NOW.is_gateway("s999", "gw1")
    assert not RULES_NOW.is_gateway("s042", "till-1")


# -- names -------------------------------------------------------------------------------------------


def test_user_names_are_derived_and_parse_back() -> None:
    assert [i.username for i in (GW1, TILL, SHOP, SERVER)] == [
        "gateway/s042/gw1", "pos/s042/till-1", "integration/s042/shop", "server/server"]
    for identity in (GW1, TILL, SHOP, SERVER):
        assert Identity.parse(identity.username) == identity


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Identity(Role.GATEWAY, "gw:1", "s042"), "gateway id must be 1-64 letters"),
    (lambda: Identity(Role.POS, "till 1", "s042"), "name must be"),
    (lambda: Identity(Role.POS, "till", "s/1"), "store must be"),
    (lambda: Identity(Role.POS, "till", None), "store must be"),
    (lambda: Identity(Role.POS, "+", "s042"), "name must be"),
    (lambda: Identity(Role.INTEGRATION, "x" * 65, "s042"), "name must be"),
    (lambda: Identity(Role.SERVER, "server", "s042"), "a server identity has no store"),
    (lambda: Identity("admin", "x", "s042"),  # type: ignore[arg-type]
     "role must be one of server, gateway, pos, integration"),
    (lambda: Identity.parse("gateway/s042"), "is not server/INSTANCE"),
    (lambda: Identity.parse("admin/s042/x"), "is not server/INSTANCE"),
    (lambda: Identity.parse("server/a/b"), "is not server/INSTANCE"),
])
def test_bad_names_are_refused_naming_the_part(make: object, message: str) -> None:
    with pytest.raises(IdentityError, match=message):
        make()  # type: ignore[operator]


@given(st.text(max_size=80))
def test_no_valid_user_name_holds_a_colon_blank_or_wildcard(text: str) -> None:
    try:
        identity = Identity.parse(text)
    except IdentityError:
        return
    assert not set(identity.username) & set(":+# \t\n\x00")
    assert identity.username == text


# -- topic matching ------------------------------------------------------------------------------


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), [
    ("a/b", "a/b", True), ("a/+", "a/b", True), ("a/+", "a/b/c", False), ("a/#", "a", True),
    ("a/#", "a/b/c", True), ("#", "a", True), ("#", "$SYS/x", False), ("+/x", "$SYS/x", False),
    ("a/b", "a/b/", False), ("a/+/c", "a//c", True), ("a/b", "a/+", False), ("a/#", "a/#", False),
])
def test_matches_follows_mqtt(topic_filter: str, topic: str, expected: bool) -> None:
    assert matches(topic_filter, topic) is expected


@pytest.mark.parametrize(("allowed", "requested", "expected"), [
    ("a/+/c", "a/b/c", True), ("a/+/c", "a/+/c", True), ("a/b/c", "a/+/c", False), ("a/#", "a/b/#", True),
    ("a/#", "a", True), ("a/+", "a/#", False), ("a/+", "a/b/c", False), ("#", "#", True), ("a/b", "a/b/#", False),
])
def test_covers_means_every_matching_topic_is_allowed(allowed: str, requested: str, expected: bool) -> None:
    assert covers(allowed, requested) is expected


_LEVEL = st.sampled_from(["a", "b", "+", "#"])


@given(st.lists(_LEVEL, min_size=1, max_size=4), st.lists(_LEVEL, min_size=1, max_size=4),
       st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=5))
def test_a_covered_filter_matches_nothing_its_cover_does_not(allowed: list[str], requested: list[str],
                                                             topic: list[str]) -> None:
    a, r, t = "/".join(allowed), "/".join(requested), "/".join(topic)
    if covers(a, r) and matches(r, t):
        assert matches(a, t), (a, r, t)


# -- passwords and Mosquitto's files -------------------------------------------------------------


def test_the_hash_is_mosquittos_7_format_fixed_vector() -> None:
    assert hash_password("secret", salt=bytes(range(12))) == (
        "$7$101$AAECAwQFBgcICQoL$"
        "Xr99N9ym9ys8TWxis5ajETJq6EVYzmc6nb8t3pUYnPBbCAbICS4xejTltonXWCtJNBvA+By+TXUqU6qCblO00w==")
    stored = hash_password("secret")
    assert verify_password("secret", stored) and not verify_password("secret ", stored)
    assert not verify_password("", stored) and not verify_password(None, stored)
    assert len(new_password()) == 43 and new_password() != new_password()


@pytest.mark.parametrize("stored", ["", "plain", "$6$AAAA$BBBB", "$7$0$AAECAwQFBgcICQoL$" + "A" * 88,
                                    "$7$101$AAEC$" + "A" * 88, "$7$101$AAECAwQFBgcICQoL$AAAA", "$7$101$!!$!!"])
def test_a_malformed_stored_hash_is_refused_without_quoting_it(stored: str) -> None:
    with pytest.raises(PasswordHashError) as caught:
        verify_password("x", stored)
    assert (stored not in str(caught.value)) or not stored


@pytest.mark.skipif(MOSQUITTO_PASSWD is None, reason="mosquitto_passwd is not installed")
def test_hashes_made_by_mosquitto_passwd_verify_here(tmp_path: Path) -> None:
    assert MOSQUITTO_PASSWD is not None
    path = tmp_path / "passwd"
    subprocess.run([MOSQUITTO_PASSWD, "-c", "-b", str(path), "pos/s042/till-1", "Zażółć-1"], check=True,
                   capture_output=True, timeout=30)
    user, stored = path.read_text(encoding="utf-8").strip().split(":", 1)
    assert user == "pos/s042/till-1" and stored.startswith("$7$")
    assert verify_password("Zażółć-1", stored) and not verify_password("Zazolc-1", stored)


def test_the_files_list_active_identities_with_their_topics() -> None:
    rules = AccessSnapshot("esl", [(GW1, HASH), (TILL, HASH), (SERVER, HASH)])
    assert rules.password_file("made for a test") == (
        f"# made for a test\n\ngateway/s042/gw1:{HASH}\npos/s042/till-1:{HASH}\nserver/server:{HASH}\n")
    assert rules.acl_file() == (
        "user gateway/s042/gw1\n"
        "topic write esl/s042/gateway/gw1/events\ntopic write esl/s042/gateway/gw1/status\n"
        "topic read esl/s042/gateway/gw1/jobs\n\n"
        "user pos/s042/till-1\n"
        "topic write esl/s042/pos/prices\ntopic write esl/s042/pos/stock\n"
        "topic read esl/s042/pos/errors\ntopic read esl/s042/pos/acks\n\n"
        "user server/server\ntopic readwrite esl/#\ntopic readwrite homeassistant/#\n")
    assert AccessSnapshot("esl", []).password_file() == "" and AccessSnapshot("esl", []).acl_file() == ""


def test_snapshots_compare_by_identities_and_hashes() -> None:
    one = AccessSnapshot("esl", [(GW1, HASH), (TILL, HASH)])
    assert one == AccessSnapshot("esl", [(TILL, HASH), (GW1, HASH)])
    assert one != AccessSnapshot("esl", [(GW1, HASH), (TILL, hash_password("pw"))])  # a new salt: a new hash
    assert one != AccessSnapshot("esl", [(GW1, HASH)])
    assert one != AccessSnapshot("chain", [(GW1, HASH), (TILL, HASH)])
    with pytest.raises(IdentityError, match="given twice"):
        AccessSnapshot("esl", [(GW1, HASH), (GW1, HASH)])
    with pytest.raises(IdentityError, match="gateway/s042/gw1: a stored password hash is not"):
        AccessSnapshot("esl", [(GW1, "secret-in-clear")])


# -- the discovery rate limit and its settings -----------------------------------------------------


def test_buckets_allow_a_burst_then_the_rate_per_key() -> None:
    now = [0.0]
    buckets = Buckets(rate_per_s=1.0, burst=3, clock=lambda: now[0])
    assert [buckets.take("gw1") for _ in range(5)] == [True, True, True, False, False]
    assert buckets.take("gw2")  # another key has its own bucket
    now[0] = 1.5
    assert [buckets.take("gw1") for _ in range(3)] == [True, False, False]
    now[0] = 100.0
    assert sum(buckets.take("gw1") for _ in range(10)) == 3  # refilled to the burst, no more
    assert all(Buckets(0, 1).take("gw1") for _ in range(1000))  # 0: no limit
    with pytest.raises(ValueError, match="burst >= 1"):
        Buckets(1.0, 0)


@pytest.mark.parametrize(("env", "message"), [
    ({"ESL_GATEWAY_REGISTRATION": "optional"}, "gateway_registration: expected required or open, got 'optional'"),
    ({"ESL_DISCOVERY_RATE_PER_MIN": "-1"}, "discovery_rate_per_min: expected a number in 0..1000000"),
    ({"ESL_DISCOVERY_RATE_PER_MIN": "nan"}, "discovery_rate_per_min"),
    ({"ESL_DISCOVERY_BURST": "0"}, "discovery_burst: expected an integer in 1..1000000, got 0"),
])
def test_bad_registration_and_discovery_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=env)


def test_registration_is_required_and_discoveries_limited_by_default() -> None:
    s = load_settings(environ={})
    assert (s.gateway_registration, s.discovery_rate_per_min, s.discovery_burst) == ("required", 20.0, 50)
