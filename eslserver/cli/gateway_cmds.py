"""`esl gateway`: the MQTT ↔ radio bridge of one store gateway (see `eslserver.gateway.bridge`)."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from firmware_proto.trust import VerifyKey

__all__ = ["register", "gateway", "trusted_line"]

log = logging.getLogger(__name__)


def trusted_line(trusted: VerifyKey | None, configured: VerifyKey | None) -> str:
    """What `esl gateway` says at start about the server key it trusts (fingerprints)."""
    if trusted is None:
        return "server key: none (no server_public_key set: every job will be refused)"
    if trusted == configured or configured is None:
        return f"server key: {trusted.fingerprint} (server_public_key)"
    return (f"server key: {trusted.fingerprint} (followed the server's key rotation from the configured "
            f"{configured.fingerprint})")


def gateway(
    config_file: Path | None = typer.Option(None, "--config", "-c",
                                            help="esl.toml to read (default ./esl.toml if present)."),
    broker: str | None = typer.Option(
        None, "--broker", help="Broker URL: mqtt://[user[:pass]@]host[:port] or mqtts://... (broker_url)."),
    radio: str | None = typer.Option(None, "--radio",
                                     help="sim://HOST:PORT (the `esl simulate` radio) or ble (radio)."),
    store: str | None = typer.Option(None, "--store", help="Store id (the topic level after the prefix; store)."),
    gateway_id: str | None = typer.Option(None, "--id", help="This gateway's id, unique in the store (gateway_id)."),
    data: Path | None = typer.Option(None, "--data", help="Directory for the job spool (data_dir)."),
    concurrency: int | None = typer.Option(None, "--concurrency", min=1, max=10_000,
                                           help="Jobs in flight at most (gateway_concurrency, default 8)."),
    prefix: str | None = typer.Option(None, "--prefix", help="MQTT topic prefix (topic_prefix, default esl)."),
    username: str | None = typer.Option(None, "--username", help="Broker user name, over the URL's (mqtt_username)."),
    password: str | None = typer.Option(None, "--password", help="Broker password (mqtt_password, ESL_MQTT_PASSWORD)."),
    ca_file: Path | None = typer.Option(None, "--ca-file",
                                        help="CA certificate(s) for an mqtts:// broker (mqtt_ca_file)."),
    insecure: bool = typer.Option(False, "--insecure",
                                  help="mqtts:// without certificate checks, tests only (mqtt_insecure)."),
    status_interval: float | None = typer.Option(None, "--status-interval", min=0.1,
                                                 help="Seconds between status events (gateway_status_interval_s, "
                                                      "default 30)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level (default WARNING)."),
    log_format: str | None = typer.Option(None, "--log-format",
                                          help="text, or json: one JSON object per line (log_format)."),
    server_public_key: str | None = typer.Option(
        None, "--server-public-key", help="The server's public key, 64 hex digits, as `esl trust server-key` "
                                          "prints it (server_public_key): only jobs it signed are run."),
    show_key: bool = typer.Option(False, "--show-key",
                                  help="Print this gateway's public key (made on first use) and exit: the "
                                       "server's operator registers it (esl trust gateway STORE/ID KEY)."),
) -> None:
    """Bridge the store's MQTT job topic to labels on the radio; runs until Ctrl-C or SIGTERM.

    Settings come from esl.toml < ESL_* < these flags, with the server's keys (broker_url,
    mqtt_*, topic_prefix, store, data_dir, log_format) and the gateway's own (gateway_id,
    radio, gateway_concurrency, gateway_status_interval_s, server_public_key).
    """
    from eslserver.cli.errors import how_to_change
    from eslserver.config import ConfigError, load_settings
    from eslserver.gateway.bridge import (
        Gateway,
        GatewayConfig,
        GatewayConfigError,
        RadioSpecError,
        open_radio,
    )
    from eslserver.gateway.identity import GatewayKeyError, load_or_create_key
    from eslserver.gateway.spool import SpoolError
    from eslserver.logs import setup_logging
    from eslserver.mqtt import MqttSettings, MqttSettingsError
    from eslserver.private_files import restrict_umask
    from firmware_proto.trust import VerifyKey

    restrict_umask()  # the spool holds job envelopes (label keys): this user's only
    try:
        s = load_settings(config_file, overrides={
            "broker_url": broker, "radio": radio, "store": store, "gateway_id": gateway_id, "data_dir": data,
            "gateway_concurrency": concurrency, "topic_prefix": prefix, "mqtt_username": username,
            "mqtt_password": password, "mqtt_ca_file": None if ca_file is None else str(ca_file),
            "mqtt_insecure": True if insecure else None, "gateway_status_interval_s": status_interval,
            "log_format": log_format, "server_public_key": server_public_key})
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    if show_key:
        if s.gateway_id is None:
            raise typer.BadParameter(f"gateway_id is not set: {how_to_change('gateway_id').replace('change', 'set', 1)}")
        try:
            key, made = load_or_create_key(GatewayConfig(store=s.store, gateway_id=s.gateway_id,
                                                         data_dir=s.data_dir).key_path)
        except (GatewayConfigError, GatewayKeyError) as exc:
            typer.echo(f"esl gateway: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(key.public.hex())
        if made:
            typer.echo(f"(a new key for gateway {s.store}/{s.gateway_id}, kept in {s.data_dir})", err=True)
        return
    for needed in ("broker_url", "radio", "gateway_id"):
        if getattr(s, needed) is None:
            raise typer.BadParameter(f"{needed} is not set: {how_to_change(needed).replace('change', 'set', 1)}")
    assert s.radio is not None and s.gateway_id is not None
    setup_logging(logging.INFO if verbose else logging.WARNING, s.log_format,
                  context={"store": s.store, "gateway": s.gateway_id})
    try:
        settings = MqttSettings.from_settings(s)
        config = GatewayConfig(store=s.store, gateway_id=s.gateway_id, data_dir=s.data_dir, prefix=s.topic_prefix,
                               concurrency=s.gateway_concurrency, status_interval_s=s.gateway_status_interval_s,
                               server_key=None if s.server_public_key is None else VerifyKey.from_hex(
                                   s.server_public_key))
        the_radio = open_radio(s.radio)
    except (MqttSettingsError, GatewayConfigError, RadioSpecError) as exc:
        raise typer.BadParameter(str(exc)) from None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        gw = Gateway(config, the_radio, settings)
        async with gw:
            typer.echo(f"gateway {config.gateway_id} of store {config.store}: {settings.url} <-> {s.radio}", err=True)
            typer.echo(f"gateway public key: {gw.key.public.hex()}", err=True)
            typer.echo(trusted_line(gw.server_key, config.server_key), err=True)
            await stop.wait()
        typer.echo(f"gateway {config.gateway_id} stopped: {gw.results['ack']} acks, {gw.results['nack']} nacks",
                   err=True)

    try:
        asyncio.run(main())
    except ConnectionError as exc:  # the radio cannot start (no simulator there, no adapter)
        typer.echo(f"esl gateway: radio {s.radio}: {exc}", err=True)
        raise typer.Exit(1) from None
    except (OSError, SpoolError) as exc:  # the data directory (GatewayKeyError is an OSError)
        typer.echo(f"esl gateway: {exc}; choose a writable directory with --data", err=True)
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    """Attach `esl gateway` to the `esl` app."""
    app.command("gateway")(gateway)
