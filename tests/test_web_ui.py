"""The web UI in a real headless Chromium against a whole store (server, gateway, simulated labels).

Real parts only: Mosquitto, the server with its SQLite file and render process, the gateway,
the loopback radio and simulated labels (tests/pipeline_shop.py), Chromium driven over the
DevTools protocol (tests/browser.py). One test walks the whole UI at tablet width, keeping a
screenshot of every step in ``tmp_path/screenshots`` (the path is printed; ``pytest -s``).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Final

from eslserver.auth import create_token
from tests.brokers import mosquitto
from tests.browser import Page, launch, needs_chromium
from tests.pipeline_shop import Shop, shop

pytestmark = needs_chromium

MILK: dict[str, Any] = {"sku": "100100", "name": "Mleko 3,2% 1 l", "price": "3.49", "seq": 1}
BREAD: dict[str, Any] = {"sku": "100200", "name": "Chleb żytni 500 g", "price": "5.99", "unit": {"size": 500, "measure": "g"},
         "seq": 1}
TABLET: Final = {"width": 820, "height": 1180}  # a tablet, portrait

_PREVIEW_DIGEST = """(async () => {
  const img = document.querySelector('#tpl-previews img');
  if (!img || !img.complete || !img.naturalWidth) return null;
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  const d = await crypto.subtle.digest('SHA-256', pixels);
  return [...new Uint8Array(d)].map((x) => x.toString(16).padStart(2, '0')).join('');
})()"""

_TILES = """[...document.querySelectorAll('#shelf .tile')].map((t) => ({
  mac: t.dataset.mac, expected: t.dataset.expected, displayed: t.dataset.displayed,
  mismatch: t.classList.contains('mismatch'),
  images: [...t.querySelectorAll('img')].filter((i) => i.complete && i.naturalWidth > 0).length }))"""


def js(value: Any) -> str:
    return json.dumps(value)


class Steps:
    """Screenshots named by step number, in one folder."""

    def __init__(self, page: Page, folder: Path) -> None:
        self.page, self.folder, self.n = page, folder, 0

    async def shot(self, name: str) -> None:
        self.n += 1
        await self.page.screenshot(self.folder / f"{self.n:02d}-{name}.png")


async def no_horizontal_scroll(page: Page, view: str) -> None:
    width = await page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"{view}: page is {width[0]} px wide in a {width[1]} px tablet viewport"


async def open_view(page: Page, view: str) -> None:
    """Click the view's link in the navigation; return once the view is shown."""
    await page.click(f"#nav a[data-view={view}]")
    await page.wait_for(f"!document.querySelector('#view-{view}').hidden && "
                        f"document.querySelector('#nav a[data-view={view}]').getAttribute('aria-current') === 'page'",
                        what=f"the {view} view")


async def sign_in(page: Page, token: str) -> None:
    await page.wait_for("!document.querySelector('#view-signin').hidden", what="the sign-in form")
    await page.fill("#token", token)
    await page.press("Enter")  # keyboard: the form submits on Enter


async def dashboard_steps(page: Page, s: Shop, steps: Steps) -> None:
    await page.wait_for("document.querySelector('#stat-ok').textContent === '4'", what="4 labels up to date",
                        timeout=15)
    await page.wait_for("document.querySelector('#live').textContent === 'live'", what="the live stream")
    before = int(await page.text("#stat-updates"))
    assert await page.text("#stat-gw-online") == "1"
    assert "gw1" in await page.text("#gateways")
    await no_horizontal_scroll(page, "dashboard")
    await steps.shot("dashboard")
    await s.publish_prices({"sku": MILK["sku"], "price": "2.99", "seq": 2})  # a POS, on MQTT
    # no reload: the numbers arrive over the event stream (the page's own poll is every 30 s)
    await page.wait_for(f"document.querySelector('#stat-updates').textContent === '{before + 1}'",
                        what="the dashboard counting the MQTT price update", timeout=15)
    await steps.shot("dashboard-after-mqtt-price")
    await s.converged()
    await page.wait_for("document.querySelector('#stat-ok').textContent === '4'",
                        what="all 4 labels up to date again", timeout=15)


async def shelf_steps(page: Page, s: Shop, steps: Steps) -> None:
    await open_view(page, "shelf")
    await page.wait_for(f"(() => {{ const t = {_TILES}; return t.length === 4 && t.every((x) => !x.mismatch"
                        " && x.images === 2 && x.expected === x.displayed); })()",
                        what="4 labels, each drawn twice, all up to date")
    await no_horizontal_scroll(page, "shelf")
    await steps.shot("shelf")
    # filter by aisle (two labels are in aisle A1) and by state
    await page.fill("#f-aisle", "A1")
    await page.wait_for("document.querySelectorAll('#shelf .tile').length === 2", what="aisle filter: 2 labels")
    await page.fill("#f-aisle", "")
    await page.wait_for("document.querySelectorAll('#shelf .tile').length === 4", what="filter cleared")
    await page.evaluate("(() => { const s = document.querySelector('#f-state'); s.value = 'failed';"
                        " s.dispatchEvent(new Event('change')); })()")
    await page.wait_for("document.querySelector('#shelf-count').textContent.startsWith('0 of 0')",
                        what="state filter: no failed labels")
    await page.evaluate("(() => { const s = document.querySelector('#f-state'); s.value = '';"
                        " s.dispatchEvent(new Event('change')); })()")
    await page.wait_for("document.querySelectorAll('#shelf .tile').length === 4", what="state filter cleared")
    # open a label with the keyboard: its product, battery, history; the LED needs a tech
    mac = s.macs[0]
    await page.focus(f"#shelf .tile[data-mac={js(mac)}]")
    await page.press("Enter")
    await page.wait_for("document.querySelector('#label-dialog').open && "
                        "document.querySelector('#ld-facts').textContent.includes('mV')",
                        what="the label's details with its battery")
    facts = await page.text("#ld-facts")
    assert MILK["name"] in facts and "2.99" in facts, facts
    await page.wait_for("document.querySelectorAll('#ld-history li').length > 1", what="the label's history")
    assert await page.evaluate("document.querySelector('#ld-flash').disabled"), "a merchandiser may not flash"
    assert "needs the tech or admin role" in await page.text("#ld-flash-status")
    await steps.shot("label-details")
    await page.press("Escape")
    await page.wait_for(f"!document.querySelector('#label-dialog').open && "
                        f"document.activeElement.dataset.mac === {js(mac)}",
                        what="the dialog closed, focus back on its label")


async def template_steps(page: Page, s: Shop, steps: Steps) -> dict[str, str]:
    await open_view(page, "templates")
    await page.wait_for("document.querySelector('#tpl-source').value.includes('esl-template')",
                        what="the template source")
    await page.wait_for(_PREVIEW_DIGEST, what="the first preview")
    gutter = await page.text("#tpl-gutter")
    source: str = await page.evaluate("document.querySelector('#tpl-source').value")
    assert gutter.split() == [str(i) for i in range(1, source.count("\n") + 2)], "line numbers"
    await page.evaluate(f"(() => {{ const s = document.querySelector('#tpl-sku'); s.value = {js(MILK['sku'])};"
                        " s.dispatchEvent(new Event('change')); })()")
    await page.wait_for("document.querySelector('#tpl-status').textContent.includes('saved version')",
                        what="the preview of the saved template with milk")
    first = await page.wait_for(_PREVIEW_DIGEST, what="the milk preview")
    await no_horizontal_scroll(page, "templates")
    await steps.shot("template-editor")

    assert source.count('fill="black"') == 1
    edited = source.replace('fill="black"', 'fill="red"')  # the bottom bar, red
    await page.fill("#tpl-source", edited)
    changed = await page.wait_for(f"(async () => {{ const d = await {_PREVIEW_DIGEST}; "
                                  f"return d && d !== {js(first)} ? d : null; }})()",
                                  what="the preview redrawn after the edit")
    assert "unsaved changes" in await page.text("#tpl-meta")
    await steps.shot("template-edited-preview")

    lines = edited.split("\n")
    lines[10] += "{{ product.name | }}"  # line 11: a filter without a name
    await page.fill("#tpl-source", "\n".join(lines))
    await page.wait_for("document.querySelector('#tpl-status').dataset.line === '11'",
                        what="the syntax error reported on line 11")
    status = await page.text("#tpl-status")
    assert status.startswith("Line 11:") and "syntax" in status, status
    assert await page.evaluate("document.querySelector('#tpl-gutter .bad').textContent") == "11"
    assert await page.evaluate("document.querySelector('#tpl-source').getAttribute('aria-invalid')") == "true"
    await steps.shot("template-syntax-error")
    await page.click("#tpl-goto")  # the caret goes to the faulty line
    caret = await page.evaluate("(() => { const a = document.querySelector('#tpl-source');"
                                " return a.value.slice(0, a.selectionStart).split('\\n').length; })()")
    assert caret == 11
    await page.click("#tpl-save")  # refused: the stored template stays the last good one
    await page.wait_for("document.querySelector('#tpl-status').textContent.startsWith('Not saved')",
                        what="the failing template refused")
    assert (await s.server.templates.get("shelf-2.9")) == (source, 0)

    before = {mac: (await s.label(mac))["expected_hash"] for mac in s.macs}
    await page.fill("#tpl-source", edited)
    await page.wait_for(f"(async () => (await {_PREVIEW_DIGEST}) === {js(changed)})()",
                        what="the valid edit previewed again")
    await page.click("#tpl-save")
    await page.wait_for("document.querySelector('#tpl-status').textContent.startsWith('Saved as version 1')",
                        what="the template saved")
    assert (await s.server.templates.get("shelf-2.9")) == (edited, 1)
    assert await page.evaluate("document.querySelector('#tpl-name').selectedOptions[0].textContent") == "shelf-2.9 (v1)"
    audit = await s.server.db.read("SELECT actor FROM audit WHERE action = 'template.save' AND target = 'shelf-2.9'")
    assert [r["actor"] for r in audit] == ["Ola"]  # one save: the refused one left no trace
    await steps.shot("template-saved")
    return before


async def shelf_after_save(page: Page, s: Shop, steps: Steps, before: dict[str, str]) -> None:
    await open_view(page, "shelf")
    old = js(sorted(set(before.values())))
    await page.wait_for(f"(() => {{ const t = {_TILES}; const old = {old};"
                        " return t.length === 4 && t.every((x) => !old.includes(x.expected) && !x.mismatch"
                        " && x.displayed === x.expected && x.images === 2); })()",
                        what="every label redrawn with the saved template and showing it", timeout=30)
    states = await s.converged()
    tiles = {t["mac"]: t for t in await page.evaluate(_TILES)}
    for mac, state in states.items():
        assert tiles[mac]["expected"] == state["expected_hash"] != before[mac]
        assert s.store.labels[mac].displayed_hash.hex() == state["expected_hash"]  # the label itself says so
    await steps.shot("shelf-after-template-save")


async def product_steps(page: Page, s: Shop, steps: Steps) -> None:
    await open_view(page, "products")
    await page.fill("#prod-q", "chleb")
    await page.wait_for("document.querySelectorAll('#prod-list tr').length === 1", what="search: one product")
    await page.click(f"#prod-list button[data-sku={js(BREAD['sku'])}]")
    await page.wait_for("document.querySelector('#prod-name').textContent.includes('Chleb')", what="the product")
    await page.fill("#prod-new-price", "-1")
    await page.press("Enter")
    await page.wait_for("document.querySelector('#prod-price-status').classList.contains('bad')",
                        what="the negative price refused")
    refused = await page.text("#prod-price-status")
    assert "price" in refused and "-1" in refused, refused
    await steps.shot("product-price-refused")
    await page.fill("#prod-new-price", "4.79")
    await page.press("Enter")
    await page.wait_for("document.querySelectorAll('#prod-history tr').length === 2",
                        what="the new price in the history")
    assert "4.79" in await page.text("#prod-facts")
    # a promotion (a reduction): the lowest price of the 30 days before it is shown
    await asyncio.sleep(1.1)  # a price held under a second is a seam, not a price of the 30 days (pricing)
    await page.fill("#prod-new-price", "")
    await page.fill("#prod-promo-price", "3.49")
    await page.press("Enter")
    await page.wait_for("document.querySelector('#prod-facts').textContent.includes('4.79 PLN (before the reduction)')",
                        what="the 30-day lowest price of the promotion")
    assert "Selling now3.49 PLN" in await page.text("#prod-facts")
    assert not await page.evaluate("document.querySelector('#prod-promo-end').hidden")
    product = await s.server.db.read_one("SELECT record FROM products WHERE sku = ?", (BREAD["sku"],))
    assert product is not None and json.loads(product["record"])["promo"]["price"] == "3.49"
    await no_horizontal_scroll(page, "products")
    await steps.shot("product-history")


async def read_only_steps(page: Page, s: Shop, token: str, steps: Steps) -> None:
    """A store tech: templates and prices read-only, but the LED can be flashed."""
    await page.click("#signout")
    await sign_in(page, token)
    await page.wait_for("document.querySelector('#who').textContent === 'Jan · tech (read-only)'",
                        what="a read-only session")
    await open_view(page, "templates")
    await page.wait_for("document.querySelector('#tpl-source').value.includes('esl-template')",
                        what="the template, read-only")
    assert await page.evaluate("document.querySelector('#tpl-source').readOnly")
    assert await page.evaluate("document.querySelector('#tpl-save').hidden")
    assert not await page.evaluate("document.querySelector('#tpl-readonly').hidden")
    await open_view(page, "products")
    await page.wait_for("document.querySelectorAll('#prod-list tr').length >= 1", what="products, read-only")
    await page.click("#prod-list button")
    await page.wait_for("!document.querySelector('#prod-detail').hidden", what="a product, read-only")
    assert await page.evaluate("document.querySelector('#prod-price').hidden")
    await steps.shot("read-only-product")
    mac = s.macs[1]
    await open_view(page, "shelf")
    await page.wait_for("document.querySelectorAll('#shelf .tile').length === 4", what="the shelf")
    await page.click(f"#shelf .tile[data-mac={js(mac)}]")
    await page.wait_for("document.querySelector('#label-dialog').open && !document.querySelector('#ld-flash').disabled",
                        what="the flash button enabled for a tech")
    await page.click("#ld-flash")
    await page.wait_for("document.querySelector('#ld-flash-status').textContent.startsWith('LED flash queued')",
                        what="the LED command queued")
    jobs = await s.server.db.read("SELECT id FROM jobs WHERE mac = ? AND kind = 'command'", (mac,))
    assert len(jobs) == 1
    audit = await s.server.db.read("SELECT actor FROM audit WHERE target = ? AND action LIKE '%flash%'", (mac,))
    assert [r["actor"] for r in audit] == ["Jan"]
    await steps.shot("tech-flash-led")


async def test_the_ui_end_to_end_in_chromium(tmp_path: Path) -> None:
    folder = tmp_path / "screenshots"
    print(f"\nweb UI screenshots: {folder}")
    async with mosquitto() as url, shop(tmp_path, url, labels=4) as s:
        await s.seed([MILK, BREAD])
        a, b, c, d = s.macs
        await s.bind({a: MILK["sku"], b: MILK["sku"], c: BREAD["sku"], d: BREAD["sku"]})
        async with s.server.db.transaction() as conn:
            await conn.execute("UPDATE labels SET aisle = CASE WHEN mac IN (?, ?) THEN 'A1' ELSE 'B2' END", (a, c))
        await s.converged()
        merchandiser = await create_token(s.server.db, "merchandiser", "Ola")
        tech = await create_token(s.server.db, "tech", "Jan")
        async with launch(tmp_path / "chromium") as browser:
            page = await browser.new_page(**TABLET)
            steps = Steps(page, folder)
            await page.goto(f"http://127.0.0.1:{s.server.http_port}/")
            await sign_in(page, "esl_nope_nope")
            await page.wait_for("document.querySelector('#signin-error').textContent.includes('not valid')",
                                what="a bad token refused")
            await steps.shot("signin-refused")
            await sign_in(page, merchandiser)
            await page.wait_for("document.querySelector('#who').textContent === 'Ola · merchandiser'",
                                what="signed in as Ola")
            try:
                await dashboard_steps(page, s, steps)
                await shelf_steps(page, s, steps)
                before = await template_steps(page, s, steps)
                await shelf_after_save(page, s, steps, before)
                await product_steps(page, s, steps)
                await read_only_steps(page, s, tech, steps)
            except Exception:
                await steps.shot("FAILED")  # the page as it was when the step failed
                raise
            assert page.exceptions == [], page.exceptions
    assert len(list(folder.glob("*.png"))) == steps.n


async def test_the_ui_shows_the_store_chosen_and_a_restricted_token_only_its_own(tmp_path: Path) -> None:
    """A chain of two stores in the browser: head office picks a store and sees its labels;
    a token restricted to store 2 gets store 2 without a choice, and never store 1's labels."""
    from eslserver.server import SYSTEM, Server
    from eslserver.stores_admin import add_store
    from tests.pipeline_shop import shop_settings

    settings = shop_settings(tmp_path / "data", None, store="s1", store_name="Sklep 1")
    async with Server(settings, mqtt=False, render_processes=False) as server:
        await add_store(server.db, settings, "s2", name="Sklep 2", currency="PLN", actor=SYSTEM)
        await server.serve_new_stores()
        for store, macs in (("s1", ["AA:00:00:00:01:01"]), ("s2", ["AA:00:00:00:02:01", "AA:00:00:00:02:02"])):
            async with server.db.transaction() as conn:
                for mac in macs:
                    await server.stores[store].labels.register(conn, mac, "2.9-bwry")
        office = await create_token(server.db, "admin", "head office")
        local = await create_token(server.db, "tech", "Jan, s2", stores=["s2"])
        tiles = "[...document.querySelectorAll('#shelf .tile')].map((t) => t.dataset.mac).sort().join(',')"
        async with launch(tmp_path / "chromium") as browser:
            page = await browser.new_page(**TABLET)
            await page.goto(f"http://127.0.0.1:{server.http_port}/")
            await sign_in(page, office)
            await page.wait_for("!document.querySelector('#store-pick').hidden && "
                                "document.querySelector('#store').value === 's1'", what="the store choice, s1")
            await open_view(page, "shelf")
            await page.wait_for(f"{tiles} === 'AA:00:00:00:01:01'", what="store 1's label")
            await page.evaluate("(() => { const s = document.querySelector('#store'); s.value = 's2';"
                                " s.dispatchEvent(new Event('change')); })()")
            await page.wait_for(f"{tiles} === 'AA:00:00:00:02:01,AA:00:00:00:02:02'", what="store 2's labels")
            await page.click("#signout")
            await sign_in(page, local)
            await page.wait_for("document.querySelector('#who').textContent.startsWith('Jan, s2')", what="Jan")
            assert await page.evaluate("document.querySelector('#store-pick').hidden"), "no choice of one store"
            # the live stream tells every store's changes: a token of one store does not open it
            assert await page.evaluate("document.querySelector('#live').hidden")
            await open_view(page, "shelf")
            await page.wait_for(f"{tiles} === 'AA:00:00:00:02:01,AA:00:00:00:02:02'", what="store 2's labels only")
