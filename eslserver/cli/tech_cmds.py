"""The store technician's commands, over the HTTP API of a running server.

``esl pair`` / ``esl unpair`` (`eslserver.cli.tech_pair`), ``esl labels``, ``esl label``,
``esl gateways``, ``esl find``, ``esl price`` and ``esl import`` (`eslserver.cli.tech_import`).
Where the server is and which token to use: `eslserver.cli.tech_common`.
"""

from __future__ import annotations

import time
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Optional

import typer

from eslserver.cli import tech_import, tech_pair
from eslserver.cli.tech_common import (
    Column,
    JsonOpt,
    ServerOpt,
    StoreOpt,
    TokenOpt,
    api_errors,
    colour_state,
    connect,
    fail,
    is_terminal,
    print_json,
    print_table,
)
from eslserver.cli.tech_pair import ScanError, find_label
from eslserver.client import ApiError, Json

__all__ = ["register", "labels", "label", "gateways", "find", "price"]

_STATES = ("ok", "pending", "failed", "offline", "unpaired")


def _complete_state(incomplete: str) -> list[str]:
    """Shell completion of ``--state``."""
    return [s for s in _STATES if s.startswith(incomplete)]


def _when(value: Any) -> str:
    """ISO time → ``YYYY-MM-DD HH:MM:SS`` (UTC) for tables."""
    if not value:
        return "-"
    return str(value).replace("T", " ")[:19]


_LABEL_COLUMNS = (
    Column("MAC", lambda x: x["mac"]), Column("STATE", lambda x: x["state"], colour=True),
    Column("SKU", lambda x: x["sku"]), Column("MODEL", lambda x: x["model"]),
    Column("GATEWAY", lambda x: x["gateway"]), Column("BATTERY_MV", lambda x: x["battery_mv"]),
    Column("RSSI", lambda x: x["rssi"]), Column("SHOWN", lambda x: x["expected_hash"] is not None
                                                and x["displayed_hash"] == x["expected_hash"]),
    Column("LAST_SEEN", lambda x: _when(x["last_seen"])),
)


def labels(
    state: Annotated[Optional[str], typer.Option("--state", help="ok, pending, failed, offline or unpaired.",
                                                 autocompletion=_complete_state)] = None,
    battery_below: Annotated[Optional[int], typer.Option("--battery-below", min=0, metavar="MV",
                                                         help="Battery under this many millivolts.")] = None,
    stale: Annotated[bool, typer.Option("--stale", help="Paired with a product but not showing it (yet).")] = False,
    gateway: Annotated[Optional[str], typer.Option("--gateway", help="Served by this gateway.")] = None,
    unpaired: Annotated[bool, typer.Option(
        "--unpaired", help="Not paired with a product yet (discovered by a gateway, or unpaired).")] = False,
    sku: Annotated[Optional[str], typer.Option("--sku", help="Showing this product.")] = None,
    as_json: JsonOpt = False,
    server: ServerOpt = None,
    store: StoreOpt = None,
    token: TokenOpt = None,
) -> None:
    """List labels, filtered (every filter given must hold)."""
    if state is not None and state not in _STATES:
        raise fail(f"--state: expected one of {', '.join(_STATES)}, got {state!r}", 2)
    if unpaired and state not in (None, "unpaired"):
        raise fail(f"--unpaired and --state {state} exclude each other", 2)
    filters: dict[str, object] = {"state": "unpaired" if unpaired else state, "battery_below": battery_below,
                                  "stale": True if stale else None, "gateway": gateway, "sku": sku}
    with connect(server, token, store) as client, api_errors():
        items = list(client.labels(**filters))
    if stale and not unpaired:  # a label bound to nothing is not late with anything
        items = [x for x in items if x["sku"] is not None]
    if as_json:
        print_json(items)
        return
    print_table(_LABEL_COLUMNS, items, empty="no labels match")


def _detail_lines(item: Json) -> list[tuple[str, str]]:
    product = item.get("product")
    shown = item["expected_hash"] is not None and item["displayed_hash"] == item["expected_hash"]
    rows = [
        ("mac", item["mac"]), ("state", colour_state(item["state"])),
        ("product", "-" if product is None else
         f"{product['sku']} {product.get('name') or ''} {product.get('price') or ''} "
         f"{product.get('currency') or ''}".strip()),
        ("model", item["model"]), ("template", item.get("template") or "-"),
        ("paired", "yes (holds its key)" if item.get("paired") else "no (no key yet)"),
        ("gateway", item["gateway"] or "-"), ("aisle", item.get("aisle") or "-"),
        ("shows", "its expected image" if shown else
         f"{item['displayed_hash'] or 'nothing known'} (expected {item['expected_hash'] or 'not rendered'})"),
        ("battery", f"{item['battery_mv']} mV" if item["battery_mv"] is not None else "-"),
        ("temperature", f"{item['temperature_c']} °C" if item["temperature_c"] is not None else "-"),
        ("rssi", f"{item['rssi']} dBm" if item["rssi"] is not None else "-"),
        ("last seen", _when(item["last_seen"])), ("updated", _when(item["updated_at"])),
    ]
    for job in item.get("open_jobs", []):
        rows.append(("open job", f"#{job['id']} {job['kind']} {job['state']} attempts {job['attempts']}"
                                 + (f" ({job['error']})" if job.get("error") else "")))
    return rows


def _history_text(entry: Json) -> str:
    action = str(entry["action"]).removeprefix("label.")
    before = entry.get("before") or {}
    after = entry.get("after") or {}
    if action == "bind":
        what = f"bound to {after.get('sku')}" + (f" (was {before.get('sku')})" if before.get("sku") else "")
    elif action == "unbind":
        what = f"unbound (was {before.get('sku')})"
    elif action == "flash":
        what = f"LED flashed {after.get('seconds')} s"
    else:
        what = action
    return f"{what} by {entry['actor']} ({entry['role']})"


def _event_text(event: Json) -> str:
    detail = event.get("detail")
    text = str(event["kind"])
    if isinstance(detail, dict) and detail:
        text += " " + ", ".join(f"{k}={v}" for k, v in detail.items())
    if event.get("gateway"):
        text += f" via {event['gateway']}"
    return text


def label(
    mac: Annotated[str, typer.Argument(metavar="MAC", help="Label MAC (any usual form) or barcode.")],
    events: Annotated[int, typer.Option("--events", min=0, max=1000, help="How many events and history entries.")] = 10,
    as_json: JsonOpt = False,
    server: ServerOpt = None,
    store: StoreOpt = None,
    token: TokenOpt = None,
) -> None:
    """One label: state, product, open jobs, then its history (pairings, LED) and events."""
    with connect(server, token, store) as client, api_errors():
        try:
            item = find_label(client, mac)
        except ScanError as exc:
            raise fail(str(exc)) from None
        history = client.label_history(item["mac"], limit=events) if events else []
        evts = client.label_events(item["mac"], limit=events) if events else []
    if as_json:
        print_json({**item, "history": history, "events": evts})
        return
    width = max(len(k) for k, _ in _detail_lines(item))
    for key, value in _detail_lines(item):
        typer.echo(f"{key:<{width}}  {value}")
    timeline = sorted([(h["at"], "history", _history_text(h)) for h in history]
                      + [(e["at"], "event", _event_text(e)) for e in evts], reverse=True)
    if timeline:
        typer.echo("")
        typer.echo(typer.style("history (newest first)", bold=True) if is_terminal() else "history (newest first)")
        for at, _, text in timeline:
            typer.echo(f"  {_when(at)}  {text}")


_GATEWAY_COLUMNS = (
    Column("ID", lambda x: x["id"]), Column("STATUS", lambda x: x["status"], colour=True),
    Column("LABELS", lambda x: x["labels"]), Column("LAST_SEEN", lambda x: _when(x["last_seen"])),
    Column("SERVER_KEY", lambda x: (x.get("info") or {}).get("server_key") or "-"),
)


def gateways(as_json: JsonOpt = False, server: ServerOpt = None, token: TokenOpt = None, store: StoreOpt = None) -> None:
    """Gateways: online or not, when last heard, how many labels each serves."""
    with connect(server, token, store) as client, api_errors():
        items = client.gateways()
    if as_json:
        print_json(items)
        return
    print_table(_GATEWAY_COLUMNS, items, empty="no gateways have reported")


def find(
    mac: Annotated[str, typer.Argument(metavar="MAC", help="Label MAC (any usual form) or barcode.")],
    seconds: Annotated[int, typer.Option("--seconds", "-s", min=1, max=3600, help="How long the LED flashes.")] = 10,
    wait: Annotated[float, typer.Option("--wait", min=0, metavar="SECONDS",
                                        help="Wait up to this long for the label to confirm (0: do not wait).")] = 30,
    server: ServerOpt = None,
    store: StoreOpt = None,
    token: TokenOpt = None,
) -> None:
    """Flash a label's LED so it can be found on the shelf."""
    with connect(server, token, store) as client, api_errors():
        try:
            target = find_label(client, mac)
        except ScanError as exc:
            raise fail(str(exc)) from None
        try:
            queued = client.flash(target["mac"], seconds)
        except ApiError as exc:
            if exc.code == "not_paired":
                raise fail(f"label {target['mac']} is not paired yet, so it cannot be commanded: pair it first "
                           "(esl pair)") from None
            raise
        typer.echo(f"flashing {queued['mac']} for {queued['seconds']} s (job {queued['job']})")
        if wait <= 0:
            return
        deadline = time.monotonic() + wait
        while True:
            jobs = [j for j in client.jobs(mac=queued["mac"], kind="command", limit=20) if j["id"] == queued["job"]]
            state = jobs[0]["state"] if jobs else "unknown"
            if state == "done":
                typer.echo(f"label {queued['mac']} confirmed: its LED is flashing")
                return
            if state in ("failed", "superseded"):
                error = jobs[0].get("error") or state
                raise fail(f"label {queued['mac']} did not take the command: {error}")
            if time.monotonic() >= deadline:
                raise fail(f"label {queued['mac']} has not confirmed after {wait:g} s (job {queued['job']} is "
                           f"{state}); it may be asleep or out of range")
            time.sleep(0.2)


def price(
    sku: Annotated[str, typer.Argument(metavar="SKU", help="Product SKU or EAN.")],
    new_price: Annotated[str, typer.Argument(metavar="PRICE", help="New price, e.g. 4.99 (4,99 accepted).")],
    create: Annotated[bool, typer.Option("--create", help="Add the product if the catalogue lacks it.")] = False,
    name: Annotated[Optional[str], typer.Option("--name", help="Product name (with --create, or to rename).")] = None,
    as_json: JsonOpt = False,
    server: ServerOpt = None,
    store: StoreOpt = None,
    token: TokenOpt = None,
) -> None:
    """Change a product's price by hand (audited under the token's name); its labels redraw."""
    text = new_price.strip().replace(",", ".")
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise fail(f"PRICE: expected a number such as 4.99, got {new_price!r}", 2) from None
    if not amount.is_finite() or amount < 0:
        raise fail(f"PRICE: expected a price of 0 or more, got {new_price!r}", 2)
    with connect(server, token, store) as client, api_errors():
        try:
            product = tech_pair.find_product(client, sku)
        except ScanError as exc:
            if not create:
                raise fail(f"{exc} (add --create to add it)") from None
            product = {"sku": sku.strip(), "name": None, "price": None, "currency": None}
        update: dict[str, object] = {"sku": product["sku"], "price": text}
        if name is not None:
            update["name"] = name
        try:
            result = client.submit_prices(update)
        except ApiError as exc:
            errors = exc.body.get("errors") or []
            raise fail(str(errors[0].get("detail")) if errors else exc.detail) from None
        after = client.product(product["sku"])
    if as_json:
        print_json({"result": result, "product": after})
        return
    was = f" (was {product['price']})" if product.get("price") is not None else " (new product)"
    labels_n = after.get("labels", 0)
    typer.echo(f"{after['sku']} {after.get('name') or ''}: {after['price']} {after.get('currency') or ''}{was}; "
               f"{labels_n} label{'s' if labels_n != 1 else ''} to redraw")


def register(app: typer.Typer) -> None:
    """Attach the technician's commands to the `esl` app."""
    app.command("pair")(tech_pair.pair)
    app.command("unpair")(tech_pair.unpair)
    app.command("labels")(labels)
    app.command("label")(label)
    # ``esl gateways`` is a group (add, revoke): `eslserver.cli.identity_cmds` lists with `gateways`
    app.command("find")(find)
    app.command("price")(price)
    app.command("import")(tech_import.import_)
