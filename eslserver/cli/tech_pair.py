"""`esl pair` (interactive scanning, or one label and one product), `esl pair --reset` and `esl unpair`.

``esl pair --reset LABEL`` is the technician's word that a label lost its key (factory reset,
wiped by a battery change): the server forgets the key and pairs the label again with its
factory key. The server never does that on a label's own key-less check-in, which anybody
could send; it records a ``key_lost`` event and waits for this command (audited).

The interactive loop reads one scan a line from stdin — a handheld scanner types like a
keyboard and presses Enter, and a file piped in reads the same — label, product, label,
product… until an empty line or end of input (Ctrl-D); it exits non-zero when nothing was
paired or any scan was wrong. A binding is made only once both scans are known good, by one
API call that the server applies in one transaction, so a wrong scan never leaves anything
half-bound. A wrong scan prints a message with a BEL character (the terminal beeps) on
stderr and the loop goes on:

* a label scan that names no known label, or a product where a label was expected;
* a product scan that names no product (the scanned label stays chosen);
* a label where a product was expected: that label is chosen instead (the tech rescans).

Prompts are shown only when stdin is a terminal.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Annotated, Any, Optional, TextIO

import typer

from eslserver.cli.tech_common import (
    BEL,
    ServerOpt,
    StoreOpt,
    TokenOpt,
    api_errors,
    colour_state,
    connect,
    describe,
    fail,
)
from eslserver.cli.tech_scan import label_mac, looks_like_gtin, product_keys
from eslserver.client import ApiError, Client, ClientError, Json

__all__ = ["pair", "unpair", "ScanError", "find_label", "find_product", "PairLoop", "wait_until_shown"]


class ScanError(Exception):
    """A scan that cannot be used where it was made (the message says why and what to do)."""


def find_label(client: Client, scan: str) -> Json:
    """The label a scan names (its detail JSON), or `ScanError`."""
    mac = label_mac(scan)
    if mac is not None:
        try:
            return client.label(mac)
        except ApiError as exc:
            if exc.code != "unknown_label":
                raise
    product = _product_or_none(client, scan)
    if product is not None:
        raise ScanError(f"{scan!r} is a product ({_product_text(product)}), not a label: scan the label first")
    if mac is None:
        raise ScanError(f"{scan!r} is not a label: expected its MAC (AA:BB:CC:DD:EE:FF) or its barcode")
    raise ScanError(f"unknown label {mac}: no gateway has seen it (is it powered and in range?)")


def _product_or_none(client: Client, scan: str) -> Json | None:
    text = scan.strip()
    if not text or len(text) > 64 or not text.isprintable():
        return None
    for key in product_keys(text):
        for item in client.products(key, limit=5):
            record = item.get("record") or {}
            if item["sku"] == key or record.get("ean") == key:
                return item
    return None


def find_product(client: Client, scan: str) -> Json:
    """The product a scan names (SKU, or EAN exactly), or `ScanError`."""
    product = _product_or_none(client, scan)
    if product is not None:
        return product
    if looks_like_gtin(scan.strip()):
        raise ScanError(f"unknown product: no product has barcode {scan.strip()}")
    raise ScanError(f"unknown product {scan.strip()!r}: no product has this SKU or EAN")


def _product_text(product: Json) -> str:
    name = product.get("name") or ""
    price = product.get("price")
    money = f"{price} {product.get('currency') or ''}".strip() if price is not None else "no price"
    return f"{product['sku']} {name} {money}".replace("  ", " ").strip()


def _label_text(label: Json) -> str:
    now = f"showing {label['sku']}" if label.get("sku") else "not bound"
    return f"{label['mac']} ({label['model']}, {now})"


def wait_until_shown(client: Client, mac: str, timeout: float) -> Json:
    """Poll the label until it shows its expected image (state ok), fails, or `timeout` ends."""
    deadline = time.monotonic() + timeout
    while True:
        label = client.label(mac)
        if label["state"] in ("ok", "failed") and (label["state"] == "failed" or
                                                   label["displayed_hash"] == label["expected_hash"]):
            return label
        if time.monotonic() >= deadline:
            return label
        time.sleep(0.2)


@dataclass
class PairLoop:
    """The scanning loop's state: the label waiting for its product, and counts."""

    client: Client
    out: TextIO
    err: TextIO
    template: str | None = None
    model: str | None = None
    wait: float = 0.0
    prompts: bool = False
    pending: Json | None = None
    bound: int = 0
    wrong: int = 0

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def beep(self, text: str) -> None:
        self.wrong += 1
        self.err.write(f"{BEL}{text}\n")
        self.err.flush()

    def prompt(self) -> None:
        if self.prompts:
            self.out.write("product> " if self.pending is not None else "label> ")
            self.out.flush()

    def scan(self, text: str) -> None:
        """One scan; every error is reported here, none escapes."""
        try:
            if self.pending is None:
                self._label(text)
            else:
                self._product(text)
        except ScanError as exc:
            self.beep(str(exc))
        except ClientError as exc:
            self.beep(f"error: {describe(exc)}")

    def _label(self, text: str) -> None:
        mac = label_mac(text)
        if mac is not None and self.model is not None:
            try:
                self.pending = self.client.label(mac)
            except ApiError as exc:
                if exc.code != "unknown_label":
                    raise
                self.pending = {"mac": mac, "model": self.model, "sku": None}
        else:
            self.pending = find_label(self.client, text)
        self.say(f"label {_label_text(self.pending)}: scan the product")

    def _product(self, text: str) -> None:
        assert self.pending is not None
        try:
            product = find_product(self.client, text)
        except ScanError:
            mac = label_mac(text)
            if mac is None:
                raise
            try:
                label = self.client.label(mac)
            except ApiError:
                raise ScanError(f"unknown product {text.strip()!r} (nor a known label); still waiting for the "
                                f"product of label {self.pending['mac']}") from None
            self.pending = label
            raise ScanError(f"that was a label: now pairing {_label_text(label)}; scan its product") from None
        label = self.pending
        self.pending = None  # whatever happens next, the next scan starts a new pair
        model = self.model if label.get("state") is None else None
        after = self.client.bind(label["mac"], product["sku"], template=self.template, model=model)
        self.bound += 1
        if label.get("sku") == product["sku"]:
            was = " (it already was)"
        else:
            was = f" (was {label['sku']})" if label.get("sku") else ""
        self.say(f"paired {after['mac']} → {_product_text(product)}{was}  [{colour_state(after['state'])}]")
        if self.wait > 0:
            shown = wait_until_shown(self.client, after["mac"], self.wait)
            if shown["state"] == "ok":
                self.say(f"label {after['mac']} shows it")
            else:
                self.beep(f"label {after['mac']} is {shown['state']} after {self.wait:g} s: not showing it yet")

    def finish(self) -> int:
        """Print the summary; the exit status: 1 when nothing was paired, a scan was wrong or
        a label was left without its product (a script or a supervisor must notice), else 0."""
        if self.pending is not None:
            self.err.write(f"label {self.pending['mac']} was not paired: no product scanned\n")
        self.err.write(f"{self.bound} paired, {self.wrong} wrong scans\n")
        self.err.flush()
        return 1 if self.bound == 0 or self.wrong or self.pending is not None else 0


def _interactive(client: Client, template: str | None, model: str | None, wait: float) -> None:
    with api_errors():
        me = client.me()
    if me["role"] not in ("tech", "admin"):
        typer.echo(f"warning: token {me['name']!r} has role {me['role']!r}: pairing needs tech", err=True)
    prompts = sys.stdin.isatty()
    loop = PairLoop(client, sys.stdout, sys.stderr, template=template, model=model, wait=wait, prompts=prompts)
    if prompts:
        typer.echo("Scan a label, then its product; an empty line or Ctrl-D ends.", err=True)
    try:
        while True:
            loop.prompt()
            line = sys.stdin.readline()
            if not line.strip():
                if prompts and not line:
                    loop.out.write("\n")
                break
            loop.scan(line.strip())
    except KeyboardInterrupt:
        loop.out.write("\n")
    status = loop.finish()
    if status:
        raise typer.Exit(status)


def pair(
    label: Annotated[Optional[str], typer.Argument(metavar="LABEL", help="Label MAC or barcode.",
                                                   show_default=False)] = None,
    product: Annotated[Optional[str], typer.Argument(metavar="PRODUCT", help="Product SKU or EAN.",
                                                     show_default=False)] = None,
    template: Annotated[Optional[str], typer.Option("--template", help="Template for the label(s).")] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", help="Register labels no gateway has reported yet as this model (e.g. 2.9-bwry).")] = None,
    wait: Annotated[float, typer.Option(
        "--wait", min=0, metavar="SECONDS", help="After each pairing, wait up to this long for the label to show it.")] = 0,
    reset: Annotated[bool, typer.Option(
        "--reset", help="LABEL lost its key (reset): forget it and pair the label again with its factory key.")] = False,
    server: ServerOpt = None,
    store: StoreOpt = None,
    token: TokenOpt = None,
) -> None:
    """Pair labels with products: interactively from a scanner (no arguments), or LABEL PRODUCT;
    with --reset, pair LABEL again after it lost its key."""
    if reset:
        if label is None or product is not None:
            raise fail("--reset takes one LABEL and no product", 2)
        _reset(label, wait, server, token, store)
        return
    if (label is None) != (product is None):
        raise fail("give both LABEL and PRODUCT, or neither to scan interactively", 2)
    with connect(server, token, store) as client:
        if label is None or product is None:
            _interactive(client, template, model, wait)
            return
        with api_errors():
            try:
                if model is not None and (mac := label_mac(label)) is not None:
                    target: dict[str, Any] = {"mac": mac, "sku": None}
                else:
                    target = find_label(client, label)
                item = find_product(client, product)
            except ScanError as exc:
                raise fail(str(exc)) from None
            after = client.bind(target["mac"], item["sku"], template=template, model=model)
            typer.echo(f"paired {after['mac']} → {_product_text(item)}  [{colour_state(after['state'])}]")
            if wait > 0:
                shown = wait_until_shown(client, after["mac"], wait)
                if shown["state"] != "ok":
                    raise fail(f"label {after['mac']} is {shown['state']} after {wait:g} s (not showing it yet)")
                typer.echo(f"label {after['mac']} shows it")


def _reset(label: str, wait: float, server: str | None, token: str | None, store: str | None) -> None:
    with connect(server, token, store) as client, api_errors():
        try:
            target = find_label(client, label)
        except ScanError as exc:
            raise fail(str(exc)) from None
        after = client.reset(target["mac"])
        typer.echo(f"reset {after['mac']}: its key is forgotten, pairing it again  [{colour_state(after['state'])}]")
        if wait > 0 and after.get("sku"):
            shown = wait_until_shown(client, after["mac"], wait)
            if shown["state"] != "ok":
                raise fail(f"label {after['mac']} is {shown['state']} after {wait:g} s (not paired and showing yet)")
            typer.echo(f"label {after['mac']} is paired and shows its product again")


def unpair(
    label: Annotated[str, typer.Argument(metavar="LABEL", help="Label MAC or barcode.")],
    server: ServerOpt = None,
    store: StoreOpt = None,
    token: TokenOpt = None,
) -> None:
    """Unbind a label from its product (it keeps its image until paired again)."""
    with connect(server, token, store) as client, api_errors():
        try:
            target = find_label(client, label)
        except ScanError as exc:
            raise fail(str(exc)) from None
        after = client.unbind(target["mac"])
        was = f" (was {target['sku']})" if target.get("sku") else " (was not bound)"
        typer.echo(f"unpaired {after['mac']}{was}")
