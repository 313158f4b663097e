"""Importing prices a product had before this server knew it: an admin's action, audited.

A POS may not back-date a price (`eslserver.price_rules.check_valid_from`): the history is
what the shelf showed, and the lowest price of the 30 days before a reduction is computed
from it. A store moving to this server from another system still needs those 30 days, so
an admin imports them: POS-shaped items, each with the ``valid_from`` at which it was in
effect. Items are applied oldest first, as if received then, and only after the SKU's
latest recorded change, so an import extends history and never rewrites what is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from eslserver.audit import Who, record_audit
from eslserver.ingest import Ingest, IngestResult, Unavailable, accepted_item, apply_update
from eslserver.pos_fields import read_update
from eslserver.pricing import PriceError, PriceUpdate
from eslserver.store import products
from eslserver.timeutil import parse_iso, utcnow

__all__ = ["import_history"]


async def import_history(ingest: Ingest, items: Sequence[object], *, actor: Who,
                         source: str = "import") -> IngestResult:
    """Record `items` (price updates with a past ``valid_from``) as the history they were.

    Each item is validated as a POS item is (field map, minor units, promotion below price)
    and must carry a ``valid_from`` in the past and after the SKU's latest recorded change;
    a refused item is reported (index, field, value) and the rest are applied, in one
    transaction, audited as ``price.import_history`` under `actor`. Raises `Unavailable` when
    the database cannot commit (nothing was recorded).
    """
    settings = ingest.settings
    result = IngestResult()
    now = utcnow()
    updates: list[tuple[datetime, int, PriceUpdate]] = []
    for index, item in enumerate(items):
        try:
            update = read_update(item, settings.field_map, index=index, default_currency=settings.currency)
            if update.valid_from is None or update.valid_from > now:
                raise PriceError("valid_from", None if update.valid_from is None else update.valid_from.isoformat(),
                                 "a historic price needs the past time it took effect", index=index, sku=update.sku)
            updates.append((update.valid_from, index, update))
        except PriceError as exc:
            result.errors.append(exc.to_json())
    updates.sort(key=lambda entry: entry[:2])
    try:
        await _record(ingest, updates, result, now, actor, source)
    except Exception as exc:
        failure = Unavailable.of(exc)
        if failure is None:
            raise
        raise failure from exc
    if result.accepted:
        ingest.on_dirty()
    return result


async def _record(ingest: Ingest, updates: list[tuple[datetime, int, PriceUpdate]], result: IngestResult,
                  now: datetime, actor: Who, source: str) -> None:
    """Apply `updates` (oldest first) in one transaction; accepted and refused ones go to `result`."""
    store = ingest.settings.store
    accepted: list[dict[str, object]] = []
    errors: list[dict[str, object]] = []
    async with ingest.db.transaction() as conn:
        for valid_from, index, update in updates:
            last = await products.last_change(conn, store, update.sku)
            if last is not None and parse_iso(last) >= valid_from:
                errors.append(PriceError(
                    "valid_from", valid_from.isoformat(),
                    f"not after the latest recorded change ({last}); recorded history is never rewritten",
                    index=index, sku=update.sku).to_json())
                continue
            await record_audit(conn, actor, "price.import_history", update.sku, None,
                               {"fields": dict(update.fields), "valid_from": valid_from})
            await apply_update(conn, store, update, valid_from, now, source, actor)
            accepted.append(accepted_item(index, update, "applied"))
    result.errors.extend(errors)  # only once committed: a failed transaction answers nothing
    result.accepted.extend(accepted)
