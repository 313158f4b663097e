"""Server and gateway configuration: `esl.toml` < ``ESL_*`` environment < flags, read once.

Every default lives in `Settings` below, and they run a demo store on a laptop with nothing
else installed: SQLite in ``./esl-data``, HTTP on 127.0.0.1:8080 and the embedded MQTT
broker on a free local port (``broker_url`` unset). `load_settings` validates everything
into one frozen `Settings`; tests pass an ``environ`` mapping instead of touching
``os.environ``. A value that does not fit raises `ConfigError` naming the key, the source
(file, variable or flag) and the value.
"""

from __future__ import annotations

import json
import math
import os
import re
import zoneinfo
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, get_type_hints

from eslserver.logs import LOG_FORMATS
from eslserver.topics import TopicError, Topics, check_level

if TYPE_CHECKING:
    from render.isolate import ProcessLimits

__all__ = ["DEFAULT_TEMPLATES", "EMBEDDED_BROKERS", "ENV_PREFIX", "GATEWAY_REGISTRATION", "MIN_PRICE_HISTORY_DAYS",
           "RETENTION_DAYS", "SECRET_KEY_ENV", "SIMULATOR_FACTORY_SECRET", "ConfigError", "Settings", "load_settings"]

ENV_PREFIX: Final = "ESL_"

DEFAULT_TEMPLATES: Final[Mapping[str, str]] = MappingProxyType({
    "2.9-bwry": "shelf-2.9", "4.2-bwry": "promo-4.2",
    "7.5-bwry": "talker-7.5", "1.54-bw": "shelf-1.54-bw",
})
"""The template a newly bound label gets, by model (a label can name another)."""

EMBEDDED_BROKERS: Final = ("auto", "mosquitto", "amqtt")
"""Values of `Settings.embedded_broker` (`eslserver.broker.EmbeddedBroker` implementations)."""

GATEWAY_REGISTRATION: Final = ("required", "open")
"""Values of `Settings.gateway_registration`."""

UNKNOWN_SKU: Final = ("create", "refuse")
"""Values of `Settings.unknown_sku`: what a POS update for a SKU not in the catalogue does."""

SIMULATOR_FACTORY_SECRET: Final = "eslserver-simulator-0"
"""The secret the simulator's labels (seed 0) derive their factory keys from: public, so that
`esl serve` refuses to fall back on it (anyone could pair its labels); ``esl demo`` uses it."""

SECRET_KEY_ENV: Final = "ESL_SECRET_KEY"
"""The environment variable of `Settings.secret_key` (the only place it is read from)."""

_SECRETS: Final = frozenset({"factory_secret", "secret_key", "mqtt_password"})
"""Settings whose values an error message never quotes."""

RETENTION_DAYS: Final = ("retention_jobs_days", "retention_events_days", "retention_audit_days",
                         "retention_images_days", "retention_price_history_days")
"""The retention settings in days (`eslserver.retention`); 0 keeps those rows forever."""

MIN_PRICE_HISTORY_DAYS: Final = 31
"""The least `Settings.retention_price_history_days`: the 30 days the lowest-price rule reads
before a reduction, and a day for clocks and time zones. A reduction that has lasted longer
reaches further back; `eslserver.retention` keeps what it reads whatever its age."""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _check_timezone(name: object) -> None:
    """`ConfigError` unless `name` is an IANA time zone this machine knows (``Europe/Warsaw``)."""
    try:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*", name):
            raise ValueError
        zoneinfo.ZoneInfo(name)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        raise ConfigError(f"timezone: expected an IANA time zone such as Europe/Warsaw, got {name!r:.60}") from None


class ConfigError(ValueError):
    """A configuration value that does not fit (names the key, where it came from, the value)."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the server and the gateway read from their configuration, validated.

    Both read the same keys (broker, credentials, TLS files, topic prefix, store, data
    directory, logging), so one ``esl.toml`` serves a machine that runs both; the keys only
    ``esl gateway`` reads are the ``gateway_*`` ones and ``radio``.
    """

    data_dir: Path = Path("esl-data")
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    http_tls_cert: Path | None = None
    """A PEM certificate (chain) file: with ``http_tls_key``, the API and web UI are served over
    HTTPS only. Without them, bearer tokens cross the network in clear beyond loopback."""
    http_tls_key: Path | None = None
    """The PEM private key of ``http_tls_cert``."""
    database_url: str | None = field(default=None, repr=False)
    """``postgresql://user[:password]@host[:port]/database``: the server's data on PostgreSQL (for a
    chain, and for several server instances on one database). None: SQLite, ``{data_dir}/esl.db``."""
    broker_url: str | None = None
    """``mqtt://[user:pass@]host:port`` or ``mqtts://…``; None runs the embedded broker."""
    mqtt_port: int = 0
    """The embedded broker's port on 127.0.0.1 (0: any free port; printed at start)."""
    embedded_broker: str = "auto"
    """``auto`` (Mosquitto if installed, else amqtt), ``mosquitto`` or ``amqtt``."""
    mqtt_username: str | None = None
    mqtt_password: str | None = field(default=None, repr=False)
    mqtt_ca_file: str | None = None
    mqtt_cert_file: str | None = None
    mqtt_key_file: str | None = None
    mqtt_insecure: bool = False
    mqtt_shared: bool = False
    """Take POS messages and gateway events as MQTT shared subscriptions (``$share/esl-GROUP/…``,
    GROUP derived from the secret key the instances share):
    the broker hands each message to one of the server instances. Needed when several instances
    share one PostgreSQL database, else each would handle every message; the broker must support
    shared subscriptions (Mosquitto 1.6+, EMQX, HiveMQ; the embedded amqtt broker does not)."""
    gateway_registration: str = "required"
    """``required``: the server acts only on the events and status of gateways registered with
    ``esl gateways add STORE/ID`` (an active MQTT identity, `eslserver.identities`); any other
    gateway id is ignored (logged once), and a retained ``online`` of it is cleared. ``open``:
    every gateway id is believed, as before identities; only for a broker that checks who
    publishes what by other means, and for tests."""
    discovery_rate_per_min: float = 20.0
    """New labels one gateway may discover (a check-in from a label the server does not know)
    per minute, after a burst of ``discovery_burst``; more are dropped and counted
    (``esl_discoveries_dropped_total``). A real label dropped so checks in again later. 0: no
    limit."""
    discovery_burst: int = 50
    """How many discoveries one gateway may make at once before ``discovery_rate_per_min`` applies."""
    topic_prefix: str = "esl"
    instance: str = "server"
    """This server instance's name (MQTT client id ``eslserver-{store}-{instance}``, its MQTT identity
    ``server/{instance}``, the owner of the labels it renders): unique among the instances that
    share one PostgreSQL database."""
    store: str = "demo"
    store_name: str = "Sklep demo"
    currency: str = "PLN"
    language: str = "pl"
    """The store's language (ISO 639-1), for the texts its labels and messages are in."""
    country: str = "PL"
    """The store's country (ISO 3166-1 alpha-2): the legal texts and price rules that differ."""
    timezone: str = "Europe/Warsaw"
    """The store's time zone (IANA), the local time its promotions and schedules are read in."""
    field_map: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """POS field name → canonical field (dotted for nested: ``promo.price``)."""
    valid_from_tolerance_s: int = 300
    """How far in the past a POS ``valid_from`` may lie (a POS clock behind, a message delayed
    by an outage): such an update applies as of its receipt; an older one is refused, so a POS
    cannot rewrite the price history the shelf showed (``esl import-history`` records it)."""
    max_seq_jump: int = 0
    """A POS ``seq`` more than this far above the stored one is refused and alerted (a forged
    seq would make every later genuine update stale); 0 turns the check off (POS systems
    that use timestamps as seq). ``esl reset-seq SKU`` clears a SKU's seq."""
    unknown_sku: str = "create"
    """A POS update for a SKU not in the catalogue: ``create`` the product (listed with
    ``"created_by_pos": true`` until edited) or ``refuse`` it naming the SKU."""
    pos_update_ids_days: int = 7
    """Days an accepted ``update_id`` is remembered, so that the same item sent again is
    answered ``duplicate`` and not applied twice: longer than a POS keeps re-sending."""
    debounce_ms: int = 20
    """Price changes arriving within this window are rendered together."""
    render_workers: int = 0
    """Render processes (0: one per CPU core)."""
    render_batch: int = 256
    render_lease_s: float = 60.0
    """Seconds an instance holds the dirty labels it claimed for drawing; the labels of an
    instance that died are drawn by another one after this (several instances on PostgreSQL)."""
    template_cpu_s: float = 20.0
    """CPU seconds one render batch (or preview, or template check) may use; a template that
    runs longer fails with its line, and the label keeps its last good image."""
    template_memory_mb: int = 1024
    """Memory (MB) one render batch may allocate on top of the render process's own size."""
    template_timeout_s: float = 30.0
    """Wall-clock seconds one render batch may take before its process is stopped."""
    max_in_flight: int = 64
    """Jobs in flight per gateway."""
    job_deadline_s: int = 20
    """How long a gateway may keep trying one job before it nacks."""
    retry_base_s: float = 1.0
    retry_max_s: float = 300.0
    max_attempts: int = 5
    """Attempts before an unreachable label is marked offline (caught up at its next check-in)."""
    db_check_interval_s: float = 3600.0
    """Seconds between SQLite ``quick_check`` runs on the live database (0: only at start);
    a failure turns ``/healthz`` degraded (``database: corrupt (quick_check: …)``)."""
    checkin_interval_s: float = 30.0
    """Seconds between a label's check-ins (its wake interval; the simulator's default). Labels
    do not report it, so the server assumes this one for all of them."""
    offline_after_missed: int = 3
    """A label not heard for this many check-in intervals is ``offline``, even with nothing
    pending; its next check-in brings it back."""
    retention_jobs_days: int = 14
    """Finished jobs (done, failed, superseded) are deleted this many days after they ended
    (0: kept forever). An open job is never deleted."""
    retention_events_days: int = 30
    """Label events (nacks, render errors, discoveries) older than this are deleted (0: never)."""
    retention_audit_days: int = 365
    """Audit rows older than this are deleted (0: never). Audits are evidence: keep them as
    long as your own rules on records ask."""
    retention_images_days: int = 7
    """Rendered images older than this that no label shows or expects and no open job sends
    or uses as a delta base are deleted (0: never)."""
    retention_price_history_days: int = 400
    """Price periods that ended more than this many days ago are deleted (0: never), except
    what the lowest-price rule still reads (`eslserver.retention`); at least
    `MIN_PRICE_HISTORY_DAYS`."""
    retention_interval_s: float = 600.0
    """Seconds between retention rounds (the first one runs this long after the start)."""
    factory_secret: str | None = field(default=None, repr=False)
    """Derives each label's factory key (`firmware_proto.derive_factory_key`): real labels come
    with their vendor's secret. Unset, the simulator's (`SIMULATOR_FACTORY_SECRET`) is used,
    which only ``esl demo`` and tests accept; ``esl serve`` refuses to start without it."""
    secret_key: str | None = field(default=None, repr=False)
    """The key label keys are sealed with at rest (`eslserver.keyvault`): 64 hex digits (32
    bytes, ``openssl rand -hex 32``), read only from ``ESL_SECRET_KEY``. Unset, the key is read
    from `secret_key_file` (created on the first start)."""
    secret_key_file: Path | None = None
    """The file holding the secret key as 64 hex digits (default ``{data_dir}/secret.key``,
    created 0600 on the first start); point it at a mounted secret to keep it elsewhere."""
    log_level: str = "info"
    log_format: str = "text"
    """``text`` for a terminal, ``json`` for one JSON object per line (log collectors)."""
    gateway_id: str | None = None
    """``esl gateway``: this gateway's id, unique in the store (its topics' gateway level)."""
    radio: str | None = None
    """``esl gateway``: ``sim://HOST:PORT`` (the ``esl simulate`` radio) or ``ble``."""
    gateway_concurrency: int = 8
    """``esl gateway``: jobs in flight at most."""
    gateway_status_interval_s: float = 30.0
    """``esl gateway``: seconds between its status events."""
    server_public_key: str | None = None
    """``esl gateway``: the server's Ed25519 public key, 64 hex digits (``esl trust server-key``
    prints it); the gateway runs only jobs the server signed. Unset: every job is refused."""

    def __post_init__(self) -> None:
        _check_port("http_port", self.http_port, allow_zero=True)
        _check_port("mqtt_port", self.mqtt_port, allow_zero=True)
        if (self.http_tls_cert is None) != (self.http_tls_key is None):
            given, missing = (("http_tls_cert", "http_tls_key") if self.http_tls_cert is not None
                              else ("http_tls_key", "http_tls_cert"))
            raise ConfigError(f"{given} is set but {missing} is not: HTTPS needs both the certificate and its key")
        if self.embedded_broker not in EMBEDDED_BROKERS:
            raise ConfigError(f"embedded_broker: expected {', '.join(EMBEDDED_BROKERS)}, got {self.embedded_broker!r}")
        for name in ("store", "instance"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _NAME_RE.match(value):
                raise ConfigError(f"{name}: expected letters, digits, '_', '.', '-' (max 64), got {value!r}")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", self.topic_prefix):
            raise ConfigError(f"topic_prefix: expected 1-32 letters, digits, '_' or '-', got {self.topic_prefix!r}")
        if not (len(self.currency) == 3 and self.currency.isalpha() and self.currency.isupper()):
            raise ConfigError(f"currency: expected an ISO 4217 code such as PLN, got {self.currency!r}")
        if not (isinstance(self.language, str) and re.fullmatch(r"[a-z]{2}", self.language)):
            raise ConfigError(f"language: expected an ISO 639-1 code such as pl or fr, got {self.language!r:.40}")
        if not (isinstance(self.country, str) and re.fullmatch(r"[A-Z]{2}", self.country)):
            raise ConfigError(f"country: expected an ISO 3166 code such as PL or FR, got {self.country!r:.40}")
        _check_timezone(self.timezone)
        if self.database_url is not None and not re.match(r"^postgres(ql)?://", self.database_url):
            scheme, sep, _ = self.database_url.partition("://")
            shown = f"{scheme[:20]}://…" if sep else repr(self.database_url[:40])  # never a password
            raise ConfigError(f"database_url: expected postgresql://user@host:port/database, got {shown}")
        if self.broker_url is not None and not re.match(r"^mqtts?://", self.broker_url):
            raise ConfigError(f"broker_url: expected mqtt://host:port or mqtts://host:port, got {self.broker_url!r}")
        bounds = {"debounce_ms": (0, 10_000), "render_workers": (0, 64), "render_batch": (1, 10_000),
                  "max_in_flight": (1, 10_000), "job_deadline_s": (1, 3600), "max_attempts": (1, 100),
                  "offline_after_missed": (1, 1000),
                  "gateway_concurrency": (1, 10_000), "template_memory_mb": (64, 1_048_576),
                  "valid_from_tolerance_s": (0, 86_400), "max_seq_jump": (0, 2**62),
                  "pos_update_ids_days": (1, 3650), "discovery_burst": (1, 1_000_000)}
        for name, (lo, hi) in bounds.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise ConfigError(f"{name}: expected an integer in {lo}..{hi}, got {value!r}")
        for name in ("retry_base_s", "retry_max_s", "gateway_status_interval_s", "template_cpu_s",
                     "template_timeout_s", "checkin_interval_s", "render_lease_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name}: expected a number > 0, got {value!r}")
        _check_retention(self)
        if self.gateway_registration not in GATEWAY_REGISTRATION:
            raise ConfigError(f"gateway_registration: expected {' or '.join(GATEWAY_REGISTRATION)}, "
                              f"got {self.gateway_registration!r}")
        rate = self.discovery_rate_per_min
        if (not isinstance(rate, (int, float)) or isinstance(rate, bool) or not math.isfinite(rate)
                or not 0 <= rate <= 1_000_000):
            raise ConfigError(f"discovery_rate_per_min: expected a number in 0..1000000 (0: no limit), got {rate!r}")
        if self.unknown_sku not in UNKNOWN_SKU:
            raise ConfigError(f"unknown_sku: expected {' or '.join(UNKNOWN_SKU)}, got {self.unknown_sku!r}")
        if (not isinstance(self.db_check_interval_s, (int, float)) or isinstance(self.db_check_interval_s, bool)
                or not math.isfinite(self.db_check_interval_s) or self.db_check_interval_s < 0):
            raise ConfigError(f"db_check_interval_s: expected a number >= 0, got {self.db_check_interval_s!r}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level: expected debug, info, warning or error, got {self.log_level!r}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"log_format: expected {' or '.join(LOG_FORMATS)}, got {self.log_format!r}")
        for pos, target in self.field_map.items():
            if not isinstance(pos, str) or not isinstance(target, str) or not pos or not target:
                raise ConfigError(f"field_map: expected text → text, got {pos!r} → {target!r}")
        if self.factory_secret is not None and not self.factory_secret:
            raise ConfigError("factory_secret: must not be empty")
        if self.secret_key is not None and not re.fullmatch(r"[0-9A-Fa-f]{64}", self.secret_key.strip()):
            raise ConfigError(f"secret_key ({SECRET_KEY_ENV}): expected 64 hex digits (32 bytes, as "
                              f"'openssl rand -hex 32' prints), got {len(self.secret_key.strip())} characters")
        if self.server_public_key is not None and not re.fullmatch(r"[0-9A-Fa-f]{64}", self.server_public_key.strip()):
            raise ConfigError(f"server_public_key: expected 64 hex digits (esl trust server-key prints them), "
                              f"got {self.server_public_key!r:.80}")
        if self.gateway_id is not None:
            try:
                check_level("gateway_id", self.gateway_id)
            except TopicError as exc:
                raise ConfigError(str(exc)) from None

    @property
    def database_path(self) -> Path:
        return self.data_dir / "esl.db"

    @property
    def database(self) -> str | Path:
        """Where the server's data is: `database_url`, else the SQLite file `database_path`."""
        return self.database_url if self.database_url is not None else self.database_path

    @property
    def key_file(self) -> Path:
        """Where the secret key is read from when ``ESL_SECRET_KEY`` is unset."""
        return self.secret_key_file if self.secret_key_file is not None else self.data_dir / "secret.key"

    @property
    def label_factory_secret(self) -> bytes:
        """What the labels' factory keys derive from: `factory_secret`, else the simulator's."""
        return (self.factory_secret or SIMULATOR_FACTORY_SECRET).encode()

    @property
    def workers(self) -> int:
        return self.render_workers or max(1, os.cpu_count() or 1)

    @property
    def template_limits(self) -> ProcessLimits:
        """The budget of one render batch, preview or template check (`render.isolate`)."""
        from render.isolate import ProcessLimits  # the gateway reads settings without render
        return ProcessLimits(cpu_s=self.template_cpu_s, memory_mb=self.template_memory_mb,
                             timeout_s=self.template_timeout_s)

    @property
    def topics(self) -> Topics:
        """This store's MQTT topics (``topic_prefix``, ``store``)."""
        return Topics(self.topic_prefix, self.store)


def _check_retention(s: Settings) -> None:
    """The ``retention_*`` settings: whole days, 0 meaning "keep forever"."""
    for name in RETENTION_DAYS:
        value = getattr(s, name)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 36_500:
            raise ConfigError(f"{name}: expected a number of days in 0..36500 (0: keep forever), got {value!r}")
    days = s.retention_price_history_days
    if 0 < days < MIN_PRICE_HISTORY_DAYS:
        raise ConfigError(f"retention_price_history_days: expected 0 (keep forever) or at least "
                          f"{MIN_PRICE_HISTORY_DAYS} days (the lowest-price rule reads the 30 days before a "
                          f"reduction), got {days!r}")
    value = s.retention_interval_s
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
            or not 0 < value <= 86_400):
        raise ConfigError(f"retention_interval_s: expected a number of seconds in (0, 86400], got {value!r}")


def _check_port(name: str, value: object, *, allow_zero: bool) -> None:
    lo = 0 if allow_zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= 65535:
        raise ConfigError(f"{name}: expected a port number {lo}..65535, got {value!r}")


_HINTS = get_type_hints(Settings)
_FIELDS = {f.name for f in fields(Settings)}


def _coerce(name: str, value: Any, source: str) -> Any:
    """Turn a TOML / environment / flag value into the field's type, or raise ConfigError."""
    hint = _HINTS[name]
    text = isinstance(value, str)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if text and value.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if text and value.strip().lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if hint is int:
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            return int(value) if text or isinstance(value, int) else _fail("expected an integer")
        if hint is float:
            if isinstance(value, bool):
                raise ValueError("expected a number")
            return float(value)
        if hint is Path:
            return Path(value)
        if hint == Path | None:
            return None if value is None or value == "" else Path(value)
        if name == "field_map":
            mapping = json.loads(value) if text else value
            if not isinstance(mapping, Mapping):
                raise ValueError("expected a table of POS field → canonical field")
            return MappingProxyType({str(k): v for k, v in mapping.items()})
        if value is None or (text and value == "" and "None" in str(hint)):
            return None
        if not text:
            raise ValueError("expected text")
        return value
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        shown = "a value not shown (a secret)" if name in _SECRETS else repr(value)
        raise ConfigError(f"{name} (from {source}): {exc}, got {shown}") from None


def _fail(reason: str) -> Any:
    raise ValueError(reason)


def load_settings(config_file: str | Path | None = None, *, environ: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """Settings from `config_file` (default ``esl.toml`` in the working directory, if it
    exists), then ``ESL_*`` variables from `environ` (default ``os.environ``), then
    `overrides` (command-line flags; None values are ignored)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = Path(config_file) if config_file is not None else Path(env.get(f"{ENV_PREFIX}CONFIG", "esl.toml"))
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        for key, value in data.items():
            if key not in _FIELDS:
                raise ConfigError(f"{path}: unknown setting {key!r} (known: {', '.join(sorted(_FIELDS))})")
            if key == "secret_key":  # a configuration file is shared, copied, committed
                raise ConfigError(f"{path}: secret_key is read only from {SECRET_KEY_ENV}; in a file, name "
                                  "it with secret_key_file (a file of its own, readable by the server only)")
            values[key] = _coerce(key, value, str(path))
    elif config_file is not None:
        raise ConfigError(f"config file {str(path)!r} does not exist")
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX) or var in (f"{ENV_PREFIX}CONFIG", f"{ENV_PREFIX}TOKEN"):
            continue
        key = var[len(ENV_PREFIX):].lower()
        if key not in _FIELDS:
            continue  # other tools' ESL_* variables are not ours to refuse
        values[key] = _coerce(key, value, var)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in _FIELDS:
            raise ConfigError(f"unknown setting {key!r}")
        values[key] = _coerce(key, value, f"--{key.replace('_', '-')}")
    try:
        return replace(Settings(), **values)
    except TypeError as exc:  # pragma: no cover - guarded by _FIELDS
        raise ConfigError(str(exc)) from None
