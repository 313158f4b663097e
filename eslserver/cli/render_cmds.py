"""`esl render`, `esl templates list|check` and `esl samples` (renders the sample catalogue)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from eslserver.cli.need_fonts import require_fonts_or_exit
from eslserver.cli.tech_common import Column, print_table

__all__ = ["register", "templates_app"]

templates_app = typer.Typer(help="List and check label templates.", no_args_is_help=True)

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe_name(sku: str) -> str:
    """A file name for a SKU (SKUs come from data files: no path separators, no dot-dot)."""
    name = _SAFE.sub("_", sku).strip("._") or "product"
    return name[:80]


def _err(message: str) -> None:
    typer.echo(message, err=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    _err(message)
    return typer.Exit(code)


def _write_png(path: Path, indices: Any) -> None:
    from PIL import Image as PILImage

    from render.palette import to_rgb_image

    PILImage.fromarray(to_rgb_image(indices), "RGB").save(path, optimize=False)


def _render_to(template: Any, records: Sequence[Any], *, model: str | None, out: Path | None,
               payload_dir: Path | None, images: Any, store: Any, now: datetime,
               prefix: str = "") -> tuple[int, int, int, float]:
    """Render and write files; returns (ok, failed, payload bytes, seconds spent rendering —
    writing the files is not counted, so the summary's ms/label is the engine's).

    Payload files are named ``<sku>.<format>`` (``raw``, ``deflate`` or ``deflate_planes``,
    firmware_proto's `ImageFormat`), holding exactly the bytes sent over the air.
    """
    from firmware_proto.image import ImageFormat
    from render.batch import iter_render

    ok = failed = total_bytes = 0
    writing = 0.0
    t0 = time.perf_counter()
    for result in iter_render(template, records, model=model, store=store, images=images,
                              now=now, keep_indices=out is not None):
        if result.error is not None:
            failed += 1
            _err(f"error: {result.sku}: {result.error}")
            continue
        ok += 1
        assert result.payload is not None
        total_bytes += len(result.payload.data)
        stem = prefix + _safe_name(result.sku)
        t_write = time.perf_counter()
        if out is not None and result.indices is not None:
            _write_png(out / f"{stem}.png", result.indices)
        if payload_dir is not None:
            fmt = ImageFormat(int(result.payload.format)).name.lower()
            (payload_dir / f"{stem}.{fmt}").write_bytes(result.payload.data)
        writing += time.perf_counter() - t_write
    return ok, failed, total_bytes, time.perf_counter() - t0 - writing


def render(
    template: Annotated[str, typer.Argument(help="A shipped template name (see `esl templates list`) or a .j2 file.")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Products: a JSON list or a CSV file.",
                                       exists=True, dir_okay=False, readable=True)],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Label model (default: the template's).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Directory for preview PNGs in the panel's colours (default ./esl-render unless --payload is given).")] = None,
    payload: Annotated[Optional[Path], typer.Option("--payload", "-p", help="Directory for over-the-air payloads (<sku>.deflate or <sku>.raw).")] = None,
    store_name: Annotated[str, typer.Option("--store", help="Store name shown on labels.")] = "Sklep",
    currency: Annotated[str, typer.Option("--currency", help="Default currency (ISO 4217).")] = "PLN",
) -> None:
    """Render products through a template: one preview PNG and/or payload per product."""
    require_fonts_or_exit("render")
    from render.context import ProductError, Store, load_products
    from render.samples import image_resolver
    from render.templates import TemplateError, load_template

    try:
        tmpl = load_template(template)
        records = load_products(data)
    except (TemplateError, ProductError) as exc:
        raise _fail(f"error: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(f"error: cannot read {data}: {exc}") from None
    if out is None and payload is None:
        out = Path("esl-render")
    for d in (out, payload):
        if d is not None:
            d.mkdir(parents=True, exist_ok=True)
    try:
        ok, failed, nbytes, secs = _render_to(
            tmpl, records, model=model, out=out, payload_dir=payload,
            images=image_resolver(data.parent), store=Store(store_name, currency.upper()),
            now=datetime.now(timezone.utc))
    except TemplateError as exc:  # e.g. a model the template does not declare
        raise _fail(f"error: {exc}") from None
    n = ok + failed
    per = secs * 1000 / n if n else 0.0
    avg = nbytes / ok if ok else 0
    typer.echo(f"{tmpl.name}: {ok}/{n} labels in {secs * 1000:.0f} ms ({per:.2f} ms/label), "
               f"{nbytes} payload bytes ({avg:.0f} avg)"
               + (f", {failed} failed" if failed else "")
               + (f" -> {out}" if out is not None else "")
               + (f" payloads -> {payload}" if payload is not None else ""))
    if failed:
        raise typer.Exit(1)


_TEMPLATE_COLUMNS = (
    Column("NAME", lambda r: r["name"]), Column("MODEL", lambda r: r["model"]),
    Column("SIZE", lambda r: f"{r['width']}x{r['height']}"), Column("COLOURS", lambda r: r["colours"]),
    Column("DESCRIPTION", lambda r: r["description"]),
)


@templates_app.command("list")
def templates_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """Each shipped template's name, label model, size and colours."""
    from firmware_proto.models import get_model
    from render.templates import TemplateError, shipped_template_names, shipped_templates

    try:
        templates = shipped_templates()
    except TemplateError as exc:
        raise _fail(f"error: {exc}", 1) from None
    rows: list[dict[str, Any]] = []
    for t in templates:
        m = get_model(t.info.model)
        rows.append({"name": t.name, "model": m.name, "models": list(t.info.models),
                     "width": m.width, "height": m.height, "colours": m.colours,
                     "diagonal": m.diagonal, "description": t.info.description})
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False))
        return
    if not rows:
        typer.echo(f"no templates ({shipped_template_names()})")
        return
    print_table(_TEMPLATE_COLUMNS, rows)  # as `esl labels`: a header; tab-separated when piped


@templates_app.command("check")
def templates_check(
    path: Annotated[Optional[Path], typer.Argument(help="A template file (default: every shipped template).")] = None,
) -> None:
    """Render every template (or the file given) for the sample catalogue; non-zero on any error.

    Each template runs in a render process inside the template limits (``template_cpu_s``,
    ``template_memory_mb``, ``template_timeout_s`` of esl.toml / ``ESL_*``), as the server
    runs it: a template bomb is one error line naming the template, line and limit."""
    require_fonts_or_exit("templates check")
    from eslserver.config import ConfigError, load_settings
    from eslserver.render_worker import check_samples
    from render.isolate import LimitedPool, LimitExceeded
    from render.templates import TemplateError, shipped_template_names

    try:
        limits = load_settings().template_limits
    except ConfigError as exc:
        raise _fail(f"error: {exc}") from None
    refs: list[str | Path] = [path] if path is not None else list(shipped_template_names())
    now = datetime.now(timezone.utc)
    problems = 0
    pool = LimitedPool(1, limits, name="templates-check")
    try:
        for ref in refs:
            try:
                checks = pool.call(check_samples, (str(ref), now))
            except TemplateError as exc:
                problems += 1
                _err(f"error: {exc}")
                continue
            except LimitExceeded as exc:
                problems += 1
                _err(f"error: {exc}" if exc.template else f"error: {ref}: limit error: {exc.reason}")
                continue
            for check in checks:
                for error, skus in check.errors.items():
                    more = f" and {len(skus) - 3} more" if len(skus) > 3 else ""
                    _err(f"error: {', '.join(skus[:3])}{more}: {error}")
                    problems += len(skus)
                failed = sum(len(skus) for skus in check.errors.values())
                status = "ok" if not failed else f"{failed} errors"
                typer.echo(f"{check.template} [{check.model}]: {check.labels} labels, {status}")
    finally:
        pool.close()
    if problems:
        raise typer.Exit(1)


def samples(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNGs.")] = Path("esl-samples"),
) -> None:
    """Render every shipped template for the sample catalogue into a folder of PNGs."""
    require_fonts_or_exit("samples")
    from render.context import Store
    from render.samples import image_resolver, sample_catalogue
    from render.templates import shipped_templates

    now = datetime.now(timezone.utc)
    records = sample_catalogue(now)
    store = Store("Sklep Pod Lipami", "PLN")
    images = image_resolver()
    total = failed = 0
    for tmpl in shipped_templates():
        folder = out / tmpl.name
        folder.mkdir(parents=True, exist_ok=True)
        ok, bad, nbytes, secs = _render_to(tmpl, records, model=None, out=folder, payload_dir=None,
                                           images=images, store=store, now=now)
        total += ok
        failed += bad
        typer.echo(f"  {tmpl.name:<14} {tmpl.info.model:<9} {ok} labels, "
                   f"{secs * 1000 / max(1, ok + bad):.2f} ms/label, {nbytes // max(1, ok)} bytes/label")
    typer.echo(f"{total} label previews written to {out.resolve()}")
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Attach the rendering commands to the `esl` app."""
    app.command("render")(render)
    app.add_typer(templates_app, name="templates")
    app.command("samples")(samples)
