"""eslserver.topics: every MQTT topic built and parsed in one place.

Fixed vectors written out (the contract of docs/mqtt.asyncapi.yaml), tables of bad parts and
bad topics, and hypothesis: ``Topic.parse(str(t)) == t`` for every topic, and any string
either parses into a topic that prints back as that string or raises `TopicError` only.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eslserver.config import load_settings
from eslserver.topics import Kind, Topic, TopicError, Topics

T = Topics("esl", "s042")


def test_every_topic_of_a_store_is_built_as_documented() -> None:
    assert T.pos_prices == "esl/s042/pos/prices"
    assert T.pos_errors == "esl/s042/pos/errors"
    assert T.pos_acks == "esl/s042/pos/acks"
    assert T.pos_stock == "esl/s042/pos/stock"
    assert T.picks == "esl/s042/picks"
    assert T.gateway_jobs("gw1") == "esl/s042/gateway/gw1/jobs"
    assert T.gateway_events("gw1") == "esl/s042/gateway/gw1/events"
    assert T.gateway_status("gw1") == "esl/s042/gateway/gw1/status"
    assert T.label_state("AA:BB:CC:DD:EE:01") == "esl/s042/label/AA:BB:CC:DD:EE:01/state"
    assert str(Topics("shop-7", "s.1").topic(Kind.GATEWAY_JOBS, "g_2")) == "shop-7/s.1/gateway/g_2/jobs"


def test_filters_put_a_plus_where_the_gateway_or_label_goes() -> None:
    assert {kind: T.filter(kind) for kind in Kind} == {
        Kind.POS_PRICES: "esl/s042/pos/prices",
        Kind.POS_ERRORS: "esl/s042/pos/errors",
        Kind.POS_ACKS: "esl/s042/pos/acks",
        Kind.POS_STOCK: "esl/s042/pos/stock",
        Kind.PICKS: "esl/s042/picks",
        Kind.GATEWAY_JOBS: "esl/s042/gateway/+/jobs",
        Kind.GATEWAY_EVENTS: "esl/s042/gateway/+/events",
        Kind.GATEWAY_STATUS: "esl/s042/gateway/+/status",
        Kind.LABEL_STATE: "esl/s042/label/+/state",
    }


def test_parse_gives_the_kind_and_the_parts() -> None:
    assert Topic.parse("esl/s042/gateway/gw1/events") == Topic(Kind.GATEWAY_EVENTS, "esl", "s042", gateway="gw1")
    assert Topic.parse("esl/s042/label/AA:01/state") == Topic(Kind.LABEL_STATE, "esl", "s042", mac="AA:01")
    assert Topic.parse("x/y/pos/prices") == Topic(Kind.POS_PRICES, "x", "y")
    assert T.parse(T.gateway_status("gw9")).gateway == "gw9"


@pytest.mark.parametrize(("topic", "message"), [
    ("esl/s042", "topic 'esl/s042' is not {prefix}/{store}/…: too few levels"),
    ("esl/s042/pos/stocks", "topic 'esl/s042/pos/stocks' is none of ours"),
    ("esl/s042/picks/x", "is none of ours"),
    ("esl/s042/pos/prices/extra", "is none of ours"),
    ("esl/s042/gateway/gw1/jobs/x", "is none of ours"),
    ("esl/s042/gateway/gw1", "is none of ours"),
    ("esl/s042/label/AA/status", "is none of ours"),
    ("esl/s042/gateway//events", "topic 'esl/s042/gateway//events': gateway must be a non-empty MQTT topic level"),
    ("esl/s042/gateway/+/events", "gateway must be a non-empty MQTT topic level (no '+', '#', '/'), got '+'"),
    ("esl/s042/label/#/state", "mac must be a non-empty MQTT topic level"),
    ("/s042/pos/prices", "prefix must be a non-empty MQTT topic level"),
    ("esl//pos/prices", "store must be a non-empty MQTT topic level"),
    ("esl/s+/pos/prices", "store must be"),
    ("", "too few levels"),
])
def test_parse_refuses_what_is_not_ours_naming_the_topic(topic: str, message: str) -> None:
    with pytest.raises(TopicError, match="^topic ") as caught:
        Topic.parse(topic)
    assert message in str(caught.value)
    assert repr(topic) in str(caught.value)


def test_a_store_refuses_another_stores_topic() -> None:
    with pytest.raises(TopicError, match=r"topic 'esl/s1/pos/prices' is not under esl/s042/"):
        T.parse("esl/s1/pos/prices")
    with pytest.raises(TopicError, match=r"is not under esl/s042/"):
        T.parse("other/s042/pos/prices")


@pytest.mark.parametrize(("build", "message"), [
    (lambda: Topics("es/l", "s1"), "prefix must be a non-empty MQTT topic level (no '+', '#', '/'), got 'es/l'"),
    (lambda: Topics("esl", ""), "store must be a non-empty MQTT topic level (no '+', '#', '/'), got ''"),
    (lambda: Topics("esl", "s#"), "store must be"),
    (lambda: Topics("esl", "s\x00"), "store must be"),
    (lambda: T.gateway_jobs("gw/1"), "gateway must be a non-empty MQTT topic level (no '+', '#', '/'), got 'gw/1'"),
    (lambda: T.gateway_events(""), "gateway must be"),
    (lambda: T.label_state("+"), "mac must be a non-empty MQTT topic level (no '+', '#', '/'), got '+'"),
    (lambda: T.topic(Kind.POS_PRICES, "gw1"), "a POS_PRICES topic names no gateway or label, got 'gw1'"),
    (lambda: Topic(Kind.LABEL_STATE, "esl", "s1", gateway="gw1", mac="AA"), "gateway must be None for a LABEL_STATE"),
    (lambda: Topic(Kind.GATEWAY_JOBS, "esl", "s1"), "gateway must be a non-empty MQTT topic level"),
])
def test_bad_parts_are_refused_naming_the_part_and_the_value(build: object, message: str) -> None:
    assert callable(build)
    with pytest.raises(TopicError) as caught:
        build()
    assert message in str(caught.value)


def test_settings_give_the_stores_topics() -> None:
    settings = load_settings(None, environ={"ESL_TOPIC_PREFIX": "chain", "ESL_STORE": "s7",
                                            "ESL_CONFIG": "/nonexistent/esl.toml"})
    assert settings.topics == Topics("chain", "s7")
    assert settings.topics.pos_prices == "chain/s7/pos/prices"


# -- hypothesis ---------------------------------------------------------------------------------

_LEVEL_ALPHABET = st.characters(exclude_characters="/+#\x00", exclude_categories=["Cs"])
levels = st.text(_LEVEL_ALPHABET, min_size=1, max_size=12)


@st.composite
def topics(draw: st.DrawFn) -> Topic:
    kind = draw(st.sampled_from(list(Kind)))
    part = draw(levels)
    return Topic(kind, draw(levels), draw(levels), gateway=part if kind.slot == "gateway" else None,
                 mac=part if kind.slot == "mac" else None)


@given(topics())
def test_parse_of_build_is_the_topic(topic: Topic) -> None:
    assert Topic.parse(str(topic)) == topic
    store = Topics(topic.prefix, topic.store)
    assert store.parse(str(store.topic(topic.kind, topic.gateway or topic.mac))) == topic


_TOPICISH = st.lists(st.one_of(levels, st.sampled_from(["", "+", "#", "pos", "prices", "errors", "gateway", "jobs",
                                                        "events", "status", "label", "state"])),
                     min_size=0, max_size=7).map("/".join)


@given(st.one_of(st.text(max_size=40), _TOPICISH))
def test_any_string_parses_back_to_itself_or_raises_only_topic_error(text: str) -> None:
    try:
        topic = Topic.parse(text)
    except TopicError as exc:
        assert repr(text) in str(exc)
        return
    assert str(topic) == text
