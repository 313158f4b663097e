"""Configuration: esl.toml < ESL_* < flags, validated once, errors naming key, source and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from eslserver.config import ConfigError, Settings, load_settings


def test_defaults_run_a_demo_store_with_nothing_installed(tmp_path: Path) -> None:
    s = load_settings(None, environ={"ESL_CONFIG": str(tmp_path / "absent.toml")})
    assert s == Settings()
    assert (s.http_host, s.http_port, s.broker_url) == ("127.0.0.1", 8080, None)
    assert s.database_path == Path("esl-data") / "esl.db"


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    toml = tmp_path / "esl.toml"
    toml.write_text('http_port = 9000\nstore = "s1"\ncurrency = "EUR"\n[field_map]\nProduct_ID = "sku"\nCena = "price"\n',
                    encoding="utf-8")
    env = {"ESL_HTTP_PORT": "9100", "ESL_MQTT_INSECURE": "yes", "ESL_UNRELATED_TOOL": "x", "PATH": "/bin"}
    s = load_settings(toml, environ=env, overrides={"http_port": 9200, "store": None})
    assert s.http_port == 9200          # flag beats environment beats file
    assert s.store == "s1"              # a flag left unset does not override
    assert s.currency == "EUR" and s.mqtt_insecure is True
    assert dict(s.field_map) == {"Product_ID": "sku", "Cena": "price"}
    s2 = load_settings(toml, environ={"ESL_FIELD_MAP": '{"SKU_NR": "sku"}'})
    assert dict(s2.field_map) == {"SKU_NR": "sku"}


@pytest.mark.parametrize(("source", "value", "message"), [
    ("env", {"ESL_HTTP_PORT": "http"}, "http_port (from ESL_HTTP_PORT)"),
    ("env", {"ESL_HTTP_PORT": "70000"}, "http_port: expected a port number"),
    ("env", {"ESL_CURRENCY": "złoty"}, "currency: expected an ISO 4217 code"),
    ("env", {"ESL_BROKER_URL": "http://x"}, "broker_url: expected mqtt://"),
    ("env", {"ESL_STORE": "a/b"}, "store: expected letters"),
    ("env", {"ESL_MQTT_INSECURE": "maybe"}, "expected true or false"),
    ("env", {"ESL_DEBOUNCE_MS": "-1"}, "debounce_ms: expected an integer in 0..10000"),
    ("env", {"ESL_RETRY_BASE_S": "0"}, "retry_base_s: expected a number > 0"),
    ("env", {"ESL_FIELD_MAP": "[1, 2]"}, "field_map (from ESL_FIELD_MAP)"),
    ("flag", {"colour": "red"}, "unknown setting 'colour'"),
])
def test_bad_values_name_key_source_and_value(source: str, value: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        if source == "env":
            load_settings(None, environ=value)
        else:
            load_settings(None, environ={}, overrides=value)
    assert message in str(err.value)


def test_bad_file(tmp_path: Path) -> None:
    toml = tmp_path / "esl.toml"
    toml.write_text("http_port = [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="esl.toml"):
        load_settings(toml, environ={})
    toml.write_text("htp_port = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown setting 'htp_port'"):
        load_settings(toml, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})
