"""`esl import products.csv`: the catalogue and label bindings from a spreadsheet.

The file is read here (UTF-8 with or without BOM, or Windows-1250; see
`eslserver.catalogue`), duplicates are settled over the whole file, and the rows go to
``POST /api/v1/import`` in chunks behind a progress bar (on stderr). The report lists every
rejected row with its line number; a rejected row changed nothing, and running the same
file again changes nothing. Exit status 1 when a row was rejected.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Optional

import typer

from eslserver.cli.tech_common import (
    JsonOpt,
    ServerOpt,
    StoreOpt,
    TokenOpt,
    api_errors,
    connect,
    fail,
    print_json,
)

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = ["import_", "CHUNK_ROWS"]

CHUNK_ROWS: Final = 200


def import_(
    path: Annotated[Path, typer.Argument(metavar="FILE", help="CSV with a header row: sku, price, name, … "
                                                              "and optionally label, template, model.",
                                         exists=True, dir_okay=False, readable=True)],
    encoding: Annotated[Optional[str], typer.Option(
        "--encoding", help="Force the file's encoding (default: UTF-8, else cp1250).")] = None,
    as_json: JsonOpt = False,
    server: ServerOpt = None,
    store: StoreOpt = None,
    token: TokenOpt = None,
) -> None:
    """Import products and label bindings from a CSV file (re-running it changes nothing)."""
    from eslserver.catalogue import CatalogueError, load_csv

    try:
        parsed = load_csv(path.read_bytes(), encoding)
    except CatalogueError as exc:
        raise fail(f"{path}: {exc}", 2) from None
    except OSError as exc:
        raise fail(f"{path}: {exc.strerror or exc}", 2) from None
    results: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = [e.to_json() for e in parsed.errors]
    rows = [r.to_json() for r in parsed.rows]
    with connect(server, token, store) as client, api_errors(), _progress() as bar:
        task = bar.add_task(f"importing {path.name}", total=len(rows))
        for start in range(0, len(rows), CHUNK_ROWS):
            chunk = rows[start:start + CHUNK_ROWS]
            answer = client.import_rows(chunk)
            results.extend(answer["results"])
            errors.extend(answer["errors"])
            bar.advance(task, len(chunk))
    errors.sort(key=lambda e: (e["line"], e["field"]))
    if as_json:
        print_json({"file": str(path), "encoding": parsed.encoding, "results": results, "errors": errors,
                    "duplicates": [{"line": line, "same_as": first} for line, first in parsed.duplicates]})
    else:
        _report(path, parsed.encoding, results, errors, parsed.duplicates)
    if errors:
        raise typer.Exit(1)


def _progress() -> Progress:
    """A progress bar on stderr (rich, which typer already brings), shown only on a terminal so
    that piped output and ``--json`` stay clean."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not sys.stderr.isatty(), redirect_stdout=False,
                    redirect_stderr=False)


def _report(path: Path, encoding: str, results: list[dict[str, Any]], errors: list[dict[str, Any]],
            duplicates: tuple[tuple[int, int], ...]) -> None:
    products = Counter(r["product"] for r in results if r["product"] != "none")
    bindings = Counter(r["binding"] for r in results if r["binding"] is not None)
    typer.echo(f"{path.name} ({encoding}): {len(results)} rows applied, {len(errors)} rejected, "
               f"{len(duplicates)} duplicates skipped")
    typer.echo(f"products: {products['created']} created, {products['updated']} updated, "
               f"{products['unchanged']} unchanged")
    typer.echo(f"labels: {bindings['bound']} bound, {bindings['unchanged']} unchanged")
    for line, first in duplicates:
        typer.echo(f"line {line}: duplicate of line {first}, skipped")
    for error in errors:
        detail = str(error["detail"])
        if not detail.startswith("line "):
            detail = f"line {error['line']}: {detail}"
        typer.echo(f"rejected {detail}")
