"""`esl simulate`: a simulated store radio that a gateway connects to."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import typer

from firmware_proto.models import MODELS

__all__ = ["register", "simulate"]


def simulate(
    labels: int = typer.Option(100, "--labels", "-n", min=1, help="How many simulated labels."),
    listen: str = typer.Option("127.0.0.1:7450", "--listen", help="HOST:PORT to serve the loopback radio on (port 0: any free port)."),
    loss: float = typer.Option(0.0, "--loss", min=0.0, max=0.99, help="Packet loss probability, each direction."),
    corrupt: float = typer.Option(0.0, "--corrupt", min=0.0, max=1.0, help="Probability a packet gets bit flips."),
    duplicate: float = typer.Option(0.0, "--duplicate", min=0.0, max=1.0, help="Probability a packet arrives twice."),
    latency: float = typer.Option(0.0, "--latency", min=0.0, help="Air latency in seconds (jitter: a quarter of it)."),
    offline: float = typer.Option(0.0, "--offline", min=0.0, max=1.0, help="Per wake, probability a label drops off the air."),
    offline_time: float = typer.Option(30.0, "--offline-time", min=0.0, help="Seconds a label stays off the air."),
    reboot: float = typer.Option(0.0, "--reboot", min=0.0, max=1.0, help="Per received frame, probability the label reboots."),
    low_battery: float = typer.Option(0.0, "--low-battery", min=0.0, max=1.0, help="Fraction of labels with a flat battery."),
    seed: int = typer.Option(0, "--seed", help="Seed for faults and factory keys (simulator.label.factory_key)."),
    model: list[str] = typer.Option(["2.9-bwry"], "--model", "-m", help=f"Label model (repeat to mix): {', '.join(MODELS)}."),
    wake_interval: float = typer.Option(10.0, "--wake-interval", min=0.0, help="Seconds between check-ins (0: always listening, one check-in)."),
    listen_window: float = typer.Option(2.0, "--listen-window", min=0.0, help="Seconds a label listens after a check-in or frame."),
    always_listening: bool = typer.Option(False, "--always-listening", help="Labels never sleep (still check in every --wake-interval)."),
    snapshots: Path | None = typer.Option(None, "--snapshots", help="Write a PNG per label here when its screen changes."),
    snapshot_interval: float = typer.Option(2.0, "--snapshot-interval", min=0.0, help="At most one PNG per label per this many seconds."),
    summary_interval: float = typer.Option(10.0, "--summary-interval", min=0.1, help="Seconds between summary lines."),
    state: Path | None = typer.Option(None, "--state", help="Keep the labels' keys, counters and screens in this file across restarts (as real labels keep them in flash)."),
    first_label: int = typer.Option(1, "--first-label", min=0, help="Number of the first label's address (02:E5:…): stores simulated side by side need their own."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log label events."),
) -> None:
    """Run a simulated store radio until Ctrl-C or SIGTERM; a gateway connects to --listen."""
    from eslserver.private_files import restrict_umask
    from simulator.faults import FaultConfig, FaultConfigError
    from simulator.run import SimulationConfig, parse_listen, run_simulation
    from simulator.state import StateFileError
    from simulator.store import StoreConfig, StoreConfigError

    restrict_umask()  # the labels' flash (--state) holds their keys: this user's only

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        host, port = parse_listen(listen)
        faults = FaultConfig(seed=seed, loss=loss, corrupt=corrupt, duplicate=duplicate,
                             latency_s=latency, jitter_s=latency / 4, offline=offline,
                             offline_s=offline_time, reboot=reboot, low_battery=low_battery)
        store = StoreConfig(labels=labels, models=tuple(model), seed=seed,
                            wake_interval_s=wake_interval, listen_window_s=listen_window,
                            always_listening=always_listening, faults=faults, state_file=state,
                            first_label=first_label)
        config = SimulationConfig(store=store, host=host, port=port, snapshots=snapshots,
                                  snapshot_interval_s=snapshot_interval,
                                  summary_interval_s=summary_interval)
    except (ValueError, FaultConfigError, StoreConfigError) as exc:
        raise typer.BadParameter(str(exc)) from None

    def line(text: str) -> None:
        typer.echo(text)

    try:
        asyncio.run(run_simulation(config, print_line=line))
    except StateFileError as exc:
        typer.echo(f"esl simulate: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"esl simulate: cannot listen on {listen}: {exc}", err=True)
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    """Attach the simulator commands to the `esl` app."""
    app.command("simulate")(simulate)
