"""`esl gateway`: the MQTT ↔ radio bridge of one store gateway (see `eslserver.gateway.bridge`)."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import typer

__all__ = ["register", "gateway"]

log = logging.getLogger(__name__)


def gateway(
    broker: str = typer.Option(..., "--broker", help="Broker URL: mqtt://[user[:pass]@]host[:port] or mqtts://..."),
    radio: str = typer.Option(..., "--radio", help="sim://HOST:PORT (the `esl simulate` radio) or ble."),
    store: str = typer.Option(..., "--store", help="Store id (the topic level after the prefix)."),
    gateway_id: str = typer.Option(..., "--id", help="This gateway's id (unique in the store)."),
    data: Path = typer.Option(Path("./esl-data"), "--data", help="Directory for the job spool."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, max=10_000, help="Jobs in flight at most."),
    prefix: str = typer.Option("esl", "--prefix", help="MQTT topic prefix."),
    username: str | None = typer.Option(None, "--username", help="Broker user name (overrides the URL's)."),
    password: str | None = typer.Option(None, "--password", envvar="ESL_MQTT_PASSWORD",
                                        help="Broker password (or ESL_MQTT_PASSWORD)."),
    ca_file: Path | None = typer.Option(None, "--ca-file", help="CA certificate(s) for an mqtts:// broker."),
    insecure: bool = typer.Option(False, "--insecure", help="mqtts:// without certificate checks (tests only)."),
    status_interval: float = typer.Option(30.0, "--status-interval", min=0.1, help="Seconds between status events."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level (default WARNING)."),
    log_format: str = typer.Option("text", "--log-format", envvar="ESL_LOG_FORMAT",
                                   help="text, or json: one JSON object per line (or ESL_LOG_FORMAT)."),
) -> None:
    """Bridge the store's MQTT job topic to labels on the radio; runs until Ctrl-C or SIGTERM."""
    from eslserver.gateway.bridge import (
        Gateway,
        GatewayConfig,
        GatewayConfigError,
        RadioSpecError,
        open_radio,
    )
    from eslserver.logs import setup_logging
    from eslserver.gateway.spool import SpoolError
    from eslserver.mqtt import MqttSettings, MqttSettingsError

    try:
        setup_logging(logging.INFO if verbose else logging.WARNING, log_format,
                      context={"store": store, "gateway": gateway_id})
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        overrides: dict[str, object] = {}
        if username is not None:
            overrides["username"] = username
        if password is not None:
            overrides["password"] = password
        if ca_file is not None:
            overrides["ca_file"] = str(ca_file)
        if insecure:
            overrides["tls_insecure"] = True
        settings = MqttSettings.from_url(broker, **overrides)
        config = GatewayConfig(store=store, gateway_id=gateway_id, data_dir=data, prefix=prefix,
                               concurrency=concurrency, status_interval_s=status_interval)
        the_radio = open_radio(radio)
    except (MqttSettingsError, GatewayConfigError, RadioSpecError) as exc:
        raise typer.BadParameter(str(exc)) from None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        gw = Gateway(config, the_radio, settings)
        async with gw:
            typer.echo(f"gateway {gateway_id} of store {store}: {settings.url} <-> {radio}", err=True)
            await stop.wait()
        typer.echo(f"gateway {gateway_id} stopped: {gw.results['ack']} acks, {gw.results['nack']} nacks",
                   err=True)

    try:
        asyncio.run(main())
    except ConnectionError as exc:  # the radio cannot start (no simulator there, no adapter)
        typer.echo(f"esl gateway: radio {radio}: {exc}", err=True)
        raise typer.Exit(1) from None
    except (OSError, SpoolError) as exc:  # the data directory
        typer.echo(f"esl gateway: {exc}; choose a writable directory with --data", err=True)
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    """Attach `esl gateway` to the `esl` app."""
    app.command("gateway")(gateway)
