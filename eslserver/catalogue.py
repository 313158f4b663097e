"""Catalogue import: CSV rows (products and the labels showing them) into the store.

Two halves, so that the command line and the server each do what only they can:

* `decode_csv` and `parse_csv` are pure (the ``esl import`` client runs them on the file):
  the bytes are UTF-8 (a BOM is dropped) or, when they are not UTF-8 (or only by accident:
  they read as Latin text only in cp1250), Windows-1250 — the two encodings Polish
  spreadsheets are saved in. Each data row keeps the line it starts on.
  The delimiter is the one the header row uses (``;``, ``,`` or tab).
  Columns are those of `render.context.products_from_csv` (record keys, ``promo_*``,
  ``unit_*``, ``attr.*``) plus the binding columns ``label`` (or ``mac``), ``template`` and
  ``model``. Duplicates are settled here, where the whole file is seen: a row repeating an
  earlier row's product with the same values only adds its label; with other values it is
  rejected (naming the earlier line); a label given twice for one product is skipped, for two
  products the second row is rejected.
* `apply_rows` (behind ``POST /api/v1/import``) validates each row as a POS update would be
  (`eslserver.pricing`) and checks its binding, then applies the product and the binding in
  the same transaction. A row with any error is rejected whole — nothing of it is applied.
  A product whose stored record already equals the row, or a label already bound to it, is
  left alone (no history, audit or redraw), so re-running a file changes nothing.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from eslserver import pricing
from eslserver.audit import Who, record_audit
from eslserver.config import Settings
from eslserver.db.database import Database
from eslserver.ingest import apply_update
from eslserver.labels import LabelError, Labels, normalise_mac, state_json
from eslserver.pos_fields import read_update
from eslserver.store import labels as label_rows
from eslserver.store import products
from eslserver.timeutil import iso, utcnow
from eslserver.uploads import unknown_image
from firmware_proto.models import MODELS

if TYPE_CHECKING:  # types only: `esl import` runs this module's parsing half without the renderer
    from eslserver.label_templates import Templates

__all__ = [
    "CatalogueError", "ImportRow", "RowError", "ParsedCsv", "ImportReport", "decode_csv", "parse_csv",
    "load_csv", "row_from_json", "apply_rows", "MAX_ROWS", "BINDING_COLUMNS",
]

log = logging.getLogger(__name__)

MAX_ROWS: Final = 1000
"""Rows per `apply_rows` call (one HTTP request, one transaction)."""
BINDING_COLUMNS: Final = ("label", "mac", "template", "model")
_SOURCE: Final = "import"


class CatalogueError(ValueError):
    """A catalogue file or request that cannot be read at all (not one bad row)."""


@dataclass(frozen=True, slots=True)
class ImportRow:
    """One data row: the product fields (canonical names, ``sku`` always there) and the label
    to bind to it (a normalised MAC), with the template and model for that label."""

    line: int
    fields: Mapping[str, Any]
    label: str | None = None
    template: str | None = None
    model: str | None = None

    @property
    def sku(self) -> str:
        return str(self.fields.get("sku", ""))

    @property
    def binding_only(self) -> bool:
        """The row names a product already in the catalogue (or earlier in the file) and
        carries nothing but the SKU: only its label is bound."""
        return set(self.fields) == {"sku"}

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "fields": dict(self.fields), "label": self.label, "template": self.template,
                "model": self.model}


@dataclass(frozen=True, slots=True)
class RowError:
    """A rejected row: where (``line``), what (``field`` and ``value``) and why."""

    line: int
    sku: str | None
    field: str
    value: Any
    error: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "sku": self.sku, "field": self.field, "value": self.value, "error": self.error,
                "detail": self.detail}


@dataclass(frozen=True, slots=True)
class ParsedCsv:
    """A decoded, parsed file: rows to send, rows rejected already, duplicates skipped
    (``(line, earlier line)``) and the encoding the bytes were read in."""

    rows: tuple[ImportRow, ...]
    errors: tuple[RowError, ...]
    duplicates: tuple[tuple[int, int], ...]
    encoding: str


@dataclass
class ImportReport:
    """What `apply_rows` did: one result per applied row, one error per rejected row."""

    results: list[dict[str, Any]] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"results": self.results, "errors": [e.to_json() for e in self.errors]}


# --- the file: bytes → rows ---------------------------------------------------------------------

def decode_csv(data: bytes, encoding: str | None = None) -> tuple[str, str]:
    """``(text, encoding)``: `encoding` when given, else UTF-8 (BOM dropped) when the bytes
    are valid UTF-8, else Windows-1250. Raises `CatalogueError` naming the byte that does not
    decode."""
    if encoding is not None:
        try:
            return data.decode(encoding).removeprefix("\ufeff"), encoding
        except LookupError:
            raise CatalogueError(f"encoding: expected a Python codec name such as utf-8 or cp1250, "
                                 f"got {encoding!r}") from None
        except UnicodeDecodeError as exc:
            raise CatalogueError(f"encoding: the file is not {encoding}: byte 0x{data[exc.start]:02x} "
                                 f"at offset {exc.start}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        try:
            return data[3:].decode("utf-8"), "utf-8-sig"
        except UnicodeDecodeError as exc:
            raise CatalogueError(f"the file starts with a UTF-8 BOM but byte 0x{data[exc.start + 3]:02x} at "
                                 f"offset {exc.start + 3} is not UTF-8") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16"), "utf-16"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        # cp1250 text can be valid UTF-8 by accident ("RÓŻA" is D3 AF: Cyrillic "ӯ"); such
        # text is Polish in cp1250 and not Latin in UTF-8 (real Cyrillic UTF-8 turns into
        # "Đ…" in cp1250, which is no Polish letter)
        if _latin(text) or not _polish(data.decode("cp1250", "replace")):
            return text, "utf-8"
    try:
        return data.decode("cp1250"), "cp1250"
    except UnicodeDecodeError as exc:  # five byte values are undefined in cp1250
        raise CatalogueError(f"the file is neither UTF-8 nor cp1250: byte 0x{data[exc.start]:02x} at offset "
                             f"{exc.start}") from None


def _latin(text: str) -> bool:
    """Every character is ASCII, Latin (U+00A0–U+024F) or general punctuation and currency
    signs (U+2000–U+20CF: dashes, Polish quotes, €)."""
    return all(c < "\u0250" or "\u2000" <= c < "\u20d0" for c in text)


_POLISH: Final = frozenset("ąćęłńóśźżĄĆĘŁŃÓŚŹŻ–—„”“‚‘’…€°§«»×\u00a0·")


def _polish(text: str) -> bool:
    """Only ASCII, Polish letters and the punctuation a Polish catalogue uses."""
    return all(c.isascii() or c in _POLISH for c in text)


def _delimiter(text: str) -> str:
    """The delimiter the header row uses most: ``;`` ``,`` or tab (``,`` when none).

    Read from the header alone (column names hold no delimiters), not sniffed from the data,
    where Polish decimal commas (``29,99``) in a ``;`` file would mislead a guess."""
    header = text.split("\n", 1)[0]
    counts = {d: header.count(d) for d in (";", "\t", ",")}
    best = max(counts, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","


def _record(cells: Mapping[str, str]) -> dict[str, Any]:
    """The record of one row, as `render.context.products_from_csv` builds it."""
    rec: dict[str, Any] = {}
    groups: dict[str, dict[str, str]] = {"promo": {}, "unit": {}, "attributes": {}}
    for key, value in cells.items():
        if key.startswith("promo_"):
            groups["promo"][key[6:]] = value
        elif key in ("unit_size", "unit_measure"):
            groups["unit"][key[5:]] = value
        elif key.startswith("attr."):
            groups["attributes"][key[5:]] = value
        else:
            rec[key] = value
    for name, values in groups.items():
        if values:
            rec[name] = values
    return rec


def parse_csv(text: str) -> ParsedCsv:
    """The rows of a catalogue CSV (header row first; ``,`` ``;`` or tab, see `_delimiter`; empty cells
    are absent). Rows that cannot be sent (no SKU, a bad MAC, a conflicting duplicate) are
    rejected here with their line; see the module docstring for duplicates."""
    reader = csv.reader(io.StringIO(text, newline=""), csv.excel, delimiter=_delimiter(text))
    try:
        header = next(reader)
    except StopIteration:
        raise CatalogueError("the file is empty: expected a header row (sku, price, name, …)") from None
    except csv.Error as exc:
        raise CatalogueError(f"line 1: {exc}") from None
    names = [h.strip().lstrip("\ufeff") for h in header]
    lowered = [n.lower() for n in names]
    if "sku" not in lowered:
        raise CatalogueError(f"header: expected a 'sku' column, got {', '.join(repr(n) for n in names)}")
    seen_names: set[str] = set()
    for name in lowered:
        if name and name in seen_names:
            raise CatalogueError(f"header: column {name!r} is given twice")
        seen_names.add(name)
    rows: list[ImportRow] = []
    errors: list[RowError] = []
    duplicates: list[tuple[int, int]] = []
    products: dict[str, tuple[int, dict[str, Any]]] = {}   # sku → (first line, product fields)
    labels: dict[str, tuple[int, str]] = {}                # mac → (line, sku)
    line = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append(RowError(line, None, "row", None, "bad_csv", f"line {line}: {exc}"))
            break
        start, line = line, reader.line_num + 1
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(names):
            errors.append(RowError(start, None, "row", len(cells), "bad_csv",
                                   f"line {start}: {len(cells)} cells, the header has {len(names)} columns"))
            continue
        values = {names[i]: c.strip() for i, c in enumerate(cells) if c.strip() and names[i]}
        binding = {k.lower(): values.pop(k) for k in list(values) if k.lower() in BINDING_COLUMNS}
        fields = _record({("sku" if k.lower() == "sku" else k): v for k, v in values.items()})
        sku = fields.get("sku")
        if not sku:
            errors.append(RowError(start, None, "sku", None, "missing_field", f"line {start}: sku: required, got an empty cell"))
            continue
        if "label" in binding and "mac" in binding:
            errors.append(RowError(start, sku, "label", binding["label"], "invalid_value",
                                   f"line {start}: give the label in 'label' or 'mac', not both"))
            continue
        raw_label = binding.get("label", binding.get("mac"))
        mac: str | None = None
        if raw_label is not None:
            try:
                mac = normalise_mac(raw_label)
            except LabelError:
                errors.append(RowError(start, sku, "label", raw_label, "bad_mac",
                                       f"line {start}: label: expected a MAC such as AA:BB:CC:DD:EE:FF, "
                                       f"got {raw_label!r}"))
                continue
        product_fields = {k: v for k, v in fields.items() if k != "sku"}
        if sku in products:
            first, earlier = products[sku]
            if product_fields and product_fields != earlier:
                errors.append(RowError(start, sku, "sku", sku, "duplicate_sku",
                                       f"line {start}: sku {sku!r} is already on line {first} with other values"))
                continue
            fields = {"sku": sku}  # the product is applied once, from its first line
        elif product_fields:
            products[sku] = (start, product_fields)
        if mac is not None and mac in labels:
            first, bound = labels[mac]
            if bound != sku:
                errors.append(RowError(start, sku, "label", mac, "duplicate_label",
                                       f"line {start}: label {mac} is already given for sku {bound!r} on line {first}"))
                continue
            mac = None
            if fields == {"sku": sku}:
                duplicates.append((start, first))
                continue
        if mac is None and fields == {"sku": sku} and sku in products and products[sku][0] != start:
            duplicates.append((start, products[sku][0]))
            continue
        if mac is not None:
            labels[mac] = (start, sku)
        rows.append(ImportRow(start, fields, mac, binding.get("template"), binding.get("model")))
    return ParsedCsv(tuple(rows), tuple(errors), tuple(duplicates), "")


def load_csv(data: bytes, encoding: str | None = None) -> ParsedCsv:
    """`decode_csv` then `parse_csv`: the file's rows and the encoding it was read in."""
    text, used = decode_csv(data, encoding)
    return dataclasses.replace(parse_csv(text), encoding=used)


# --- the server: rows → store ---------------------------------------------------------------------

def _bad(line: int, name: str, value: object, expected: str) -> CatalogueError:
    return CatalogueError(f"rows: line {line}: {name}: expected {expected}, got {value!r:.80}")


def row_from_json(value: object, index: int) -> ImportRow:
    """An `ImportRow` from the API's JSON (``{line, fields, label?, template?, model?}``);
    `CatalogueError` naming the row and the member when the shape is wrong."""
    if not isinstance(value, dict):
        raise CatalogueError(f"rows[{index}]: expected an object {{line, fields, label?, template?, model?}}, "
                             f"got {type(value).__name__}")
    unknown = set(value) - {"line", "fields", "label", "template", "model"}
    if unknown:
        raise CatalogueError(f"rows[{index}]: unknown member {sorted(unknown)[0]!r} "
                             "(allowed: line, fields, label, template, model)")
    line = value.get("line")
    if not isinstance(line, int) or isinstance(line, bool) or not 1 <= line <= 10**9:
        raise CatalogueError(f"rows[{index}].line: expected a line number 1.., got {line!r}")
    fields = value.get("fields")
    if not isinstance(fields, dict) or not isinstance(fields.get("sku"), str) or not fields["sku"].strip():
        raise _bad(line, "fields", fields, "an object with a sku")
    out: dict[str, str | None] = {}
    for name in ("label", "template", "model"):
        item = value.get(name)
        if item is not None and (not isinstance(item, str) or not item.strip() or len(item) > 100):
            raise _bad(line, name, item, "text or null")
        out[name] = item
    return ImportRow(line, fields, out["label"], out["template"], out["model"])


def _row_error(row: ImportRow, exc: pricing.PriceError) -> RowError:
    body = exc.to_json()
    return RowError(row.line, body.get("sku") or row.sku, str(body["field"]), body.get("value"), str(body["error"]),
                    f"line {row.line}: {exc}")


async def apply_rows(rows: Sequence[ImportRow], actor: Who, *, db: Database, settings: Settings, labels: Labels,
                     templates: Templates) -> ImportReport:
    """Validate and apply `rows` in one transaction of `db`, each row whole or not at all.

    It is given the parts it needs (the API passes its server's), not the server: `labels`
    registers unseen labels and hears of the changes, `templates` says which names exist.
    """
    if len(rows) > MAX_ROWS:
        raise CatalogueError(f"rows: expected at most {MAX_ROWS} rows a request, got {len(rows)}")
    store = settings.store
    report = ImportReport()
    known: dict[str, bool] = {}
    for row in rows:
        if row.template is not None and row.template not in known:
            known[row.template] = await templates.get(row.template) is not None
    received = utcnow()
    dirty = False
    touched: list[str] = []
    async with db.transaction() as conn:
        for row in rows:
            sku = row.sku
            update: pricing.PriceUpdate | None = None
            if not row.binding_only:
                try:
                    update = read_update(row.fields, settings.field_map, default_currency=settings.currency)
                except pricing.PriceError as exc:  # in the file's own column names
                    report.errors.append(_row_error(row, exc))
                    continue
                sku = update.sku
                if update.valid_from is not None:
                    report.errors.append(RowError(row.line, sku, "valid_from", iso(update.valid_from),
                                                  "invalid_value", f"line {row.line}: valid_from: an import sets "
                                                  "today's catalogue; schedule changes through POST /prices"))
                    continue
                missing = await unknown_image(conn, store, update)  # a name or digest no upload has
                if missing is not None:
                    report.errors.append(_row_error(row, missing))
                    continue
            stored = await products.get(conn, store, sku)
            if update is None and stored is None:
                report.errors.append(RowError(row.line, sku, "sku", sku, "unknown_sku",
                                              f"line {row.line}: sku {sku!r} is not in the catalogue and the row "
                                              "has no price"))
                continue
            label_row: Any = None
            if row.label is not None:
                error = await _check_binding(conn, row, sku, known)
                if isinstance(error, RowError):
                    report.errors.append(error)
                    continue
                label_row = error
            product = "none"
            if update is not None:
                product = await _apply_product(conn, store, update, stored, received, actor)
                dirty |= product != "unchanged"
            binding: str | None = None
            if row.label is not None:
                binding = await _apply_binding(labels, conn, row, sku, label_row, received, actor)
                if binding != "unchanged":
                    dirty = True
                    touched.append(row.label)
            report.results.append({"line": row.line, "sku": sku, "product": product, "label": row.label,
                                   "binding": binding})
    if dirty:
        labels.on_dirty()
    if touched:
        labels.on_states(touched)
    log.info("import by %s: %d rows applied, %d rejected", actor.name, len(report.results), len(report.errors))
    return report


async def _check_binding(conn: Any, row: ImportRow, sku: str, templates: Mapping[str, bool]) -> Any:
    """The label's row (None: it will be registered) or the `RowError` that rejects the row."""
    assert row.label is not None
    try:
        mac = normalise_mac(row.label)
    except LabelError as exc:
        return RowError(row.line, sku, "label", row.label, exc.code, f"line {row.line}: {exc.detail}")
    if mac != row.label:
        return RowError(row.line, sku, "label", row.label, "bad_mac",
                        f"line {row.line}: label: expected the form AA:BB:CC:DD:EE:FF, got {row.label!r}")
    if row.template is not None and not templates.get(row.template):
        return RowError(row.line, sku, "template", row.template, "unknown_template",
                        f"line {row.line}: template: no template {row.template!r}")
    if row.model is not None and row.model not in MODELS:
        return RowError(row.line, sku, "model", row.model, "unknown_model",
                        f"line {row.line}: model: expected one of {', '.join(MODELS)}, got {row.model!r}")
    label = await label_rows.get(conn, mac)
    if label is None and row.model is None:
        return RowError(row.line, sku, "label", mac, "unknown_label",
                        f"line {row.line}: label {mac} has not been seen by any gateway; give its model "
                        "in a 'model' column to register it")
    return label


async def _apply_product(conn: Any, store: str, update: pricing.PriceUpdate, stored: Any, received: Any,
                         actor: Who) -> str:
    if stored is not None:
        if update.seq is not None and stored["seq"] is not None and update.seq <= stored["seq"]:
            return "unchanged"  # stale, as a POS replay would be
        before = pricing.record_from_json(stored["record"])
        after = pricing.merge_record(before, update)
        if pricing.record_to_json(after) == pricing.record_to_json(before):
            return "unchanged"
    await apply_update(conn, store, update, received, received, _SOURCE, actor)
    return "created" if stored is None else "updated"


async def _apply_binding(labels: Labels, conn: Any, row: ImportRow, sku: str, label: Any, received: Any,
                         actor: Who) -> str:
    """Bind as `eslserver.labels.Labels.bind` does, inside the import's transaction."""
    assert row.label is not None
    mac = row.label
    now = iso(received)
    if label is None:
        assert row.model is not None
        await labels.register(conn, mac, row.model, sku=sku, template=row.template)
        before = None
    else:
        if label["sku"] == sku and (row.template is None or row.template == label["template"]):
            return "unchanged"
        before = state_json(label)
        await label_rows.bind(conn, mac, sku, template=row.template, now=now)
    after = await label_rows.get(conn, mac)
    await record_audit(conn, actor, "label.bind", mac, before, state_json(after))
    return "bound"

