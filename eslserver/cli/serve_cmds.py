"""`esl serve` (the server) and `esl demo` (a whole store in one command)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from eslserver.cli.errors import startup_errors
from eslserver.cli.need_fonts import require_fonts_or_exit
from eslserver.config import SIMULATOR_FACTORY_SECRET, ConfigError, Settings, load_settings
from eslserver.logs import setup_logging
from eslserver.private_files import restrict_umask
from eslserver.startup import StartupError
from eslserver.signals import cancel_on_signal, run_until_signal

__all__ = ["register", "serve", "demo", "require_factory_secret", "settings_from_flags"]

log = logging.getLogger(__name__)

_Config = Annotated[Optional[Path], typer.Option("--config", "-c", help="esl.toml to read (default ./esl.toml if present).")]
_Data = Annotated[Optional[Path], typer.Option("--data", help="Data directory (SQLite file, spools, snapshots).")]
_Database = Annotated[Optional[str], typer.Option(
    "--database", help="postgresql://user@host:port/db: keep the data on PostgreSQL (default: SQLite in --data).")]
_Instance = Annotated[Optional[str], typer.Option(
    "--instance", help="This instance's name, unique among the servers sharing one PostgreSQL database.")]
_Host = Annotated[Optional[str], typer.Option("--http-host", help="HTTP address to listen on.")]
_Port = Annotated[Optional[int], typer.Option("--http-port", help="HTTP port (0: any free port).")]
_TlsCert = Annotated[Optional[Path], typer.Option("--tls-cert", help="PEM certificate: serve HTTPS (with --tls-key).")]
_TlsKey = Annotated[Optional[Path], typer.Option("--tls-key", help="PEM private key of --tls-cert.")]
_Broker = Annotated[Optional[str], typer.Option("--broker", help="mqtt://[user:pass@]host:port (default: the embedded broker).")]
_BrokerPort = Annotated[Optional[int], typer.Option("--broker-port", help="Port of the embedded broker (0: any free port).")]
_Store = Annotated[Optional[str], typer.Option("--store", help="Store id (MQTT topics esl/{store}/…).")]
_Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log at debug level.")]
_LogFormat = Annotated[Optional[str], typer.Option("--log-format", help="text, or json: one JSON object per line.")]


def settings_from_flags(config: Path | None, **flags: Any) -> Settings:
    """`load_settings` with the command's flags on top; a bad value exits with its message."""
    try:
        return load_settings(config, overrides=flags)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None


def _logging(settings: Settings, verbose: bool) -> None:
    setup_logging("debug" if verbose else settings.log_level, settings.log_format, context={"store": settings.store})


def serve(config: _Config = None, data: _Data = None, http_host: _Host = None, http_port: _Port = None,
          broker: _Broker = None, broker_port: _BrokerPort = None, store: _Store = None, verbose: _Verbose = False,
          log_format: _LogFormat = None, tls_cert: _TlsCert = None, tls_key: _TlsKey = None,
          database: _Database = None, instance: _Instance = None) -> None:
    """Run the server until Ctrl-C or SIGTERM."""
    restrict_umask()  # the database, the secret key, broker files: this user's only
    settings = settings_from_flags(config, data_dir=data, database_url=database, instance=instance, http_host=http_host, http_port=http_port,
                                   broker_url=broker, mqtt_port=broker_port, store=store, log_format=log_format,
                                   http_tls_cert=tls_cert, http_tls_key=tls_key)
    _logging(settings, verbose)
    with startup_errors("serve"):
        require_factory_secret(settings)
    require_fonts_or_exit("serve")

    async def main() -> None:
        from eslserver.mqtt import redact_url
        from eslserver.server import Server
        async with cancel_on_signal(), Server(settings) as server:  # SIGTERM while starting: stop
            embedded = f" (embedded {server.broker.implementation})" if server.broker is not None else ""
            typer.echo(f"eslserver: {server.http_scheme}://{settings.http_host}:{server.http_port}  "
                       f"broker {redact_url(server.broker_url or 'none')}{embedded}  "
                       f"data {settings.data_dir.resolve()}"
                       + (f"  database {server.db.location}" if settings.database_url else ""), err=False)
            if server.signing_key is not None:
                typer.echo(f"server public key (every gateway's server_public_key): {server.signing_key.public.hex()}")
            await run_until_signal()

    from eslserver.broker import BrokerError
    try:
        with startup_errors("serve"):  # a busy --http-port, an unusable --data: one line
            asyncio.run(main())
    except BrokerError as exc:
        typer.echo(f"esl serve: {exc}", err=True)
        raise typer.Exit(1) from None


def require_factory_secret(settings: Settings) -> None:
    """`esl serve` runs real labels: without `Settings.factory_secret` it would fall back on
    the simulator's, which is public (anyone could derive every label's factory key and pair
    it), so it refuses to start; ``esl demo`` alone runs on that one."""
    if settings.factory_secret is None:
        raise StartupError("factory_secret", "factory_secret is not set, and the simulator's is public (anyone "
                                             "could pair the labels)",
                           fix="set it to your labels' vendor secret with factory_secret in esl.toml or "
                               "ESL_FACTORY_SECRET (only esl demo runs on the simulator's)")
    if settings.factory_secret.startswith(SIMULATOR_FACTORY_SECRET.rpartition("-")[0] + "-"):
        log.warning("factory_secret is the simulator's: fit for simulated labels only, anyone can derive "
                    "their factory keys")


def demo(config: _Config = None, data: _Data = None, http_host: _Host = None, http_port: _Port = None,
         broker: _Broker = None, broker_port: _BrokerPort = None,
         labels: Annotated[int, typer.Option("--labels", "-n", min=1, max=20000, help="Simulated labels.")] = 300,
         feed_interval: Annotated[float, typer.Option("--feed-interval", min=0.0, help="Seconds between POS price changes (0: no POS feed).")] = 3.0,
         no_feed: Annotated[bool, typer.Option("--no-feed", help="No built-in POS: prices change only when you send them.")] = False,
         feed_size: Annotated[int, typer.Option("--feed-size", min=1, help="Products repriced each time.")] = 5,
         duration: Annotated[Optional[float], typer.Option("--duration", min=1.0, help="Stop after this many seconds.")] = None,
         stores: Annotated[int, typer.Option("--stores", min=1, max=20, help="Stores of a chain, served by the one server.")] = 1,
         verbose: _Verbose = False, log_format: _LogFormat = None) -> None:
    """A whole store in one command: server, embedded broker, gateway, simulated labels, a POS feed."""
    restrict_umask()
    settings = settings_from_flags(config, data_dir=data, http_host=http_host, http_port=http_port,
                                   broker_url=broker, mqtt_port=broker_port, log_format=log_format)
    _logging(settings, verbose)
    require_fonts_or_exit("demo")
    from eslserver.demo import DemoConfig, run_demo
    from eslserver.broker import BrokerError
    from simulator.state import StateFileError
    try:
        with startup_errors("demo"):
            asyncio.run(run_demo(settings, DemoConfig(labels=labels, feed_interval_s=0.0 if no_feed else feed_interval,
                                                      feed_size=feed_size, duration_s=duration, stores=stores),
                                 print_line=typer.echo))
    except StateFileError as exc:
        typer.echo(f"esl demo: {exc} (in --data {settings.data_dir})", err=True)
        raise typer.Exit(1) from None
    except BrokerError as exc:
        typer.echo(f"esl demo: {exc}", err=True)
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("demo")(demo)
