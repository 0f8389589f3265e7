"""The web page in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) against a real
uvicorn server on a random port: log in, filter the collection grid, open a card, confirm a review item,
and save screenshots (var/screenshots/; SCANEMON_UPDATE_SCREENSHOTS=1 also refreshes docs/screenshots/)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from server.db.models import CollectionItem, Device
from tests.collection_fixtures import *  # noqa: F401,F403 - fixtures
from tests.collection_fixtures import add_scan, make_account, make_settings
from tests.services import free_port

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "var" / "screenshots"

pytestmark = pytest.mark.browser


@pytest.fixture
def live_server(sqlite_catalog_url, tmp_path, shared_data):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium not installed (apt install chromium)")
    pytest.importorskip("playwright.sync_api")
    import cv2
    import uvicorn

    from server.app import create_app
    from server.db.session import Database

    settings = make_settings(sqlite_catalog_url, tmp_path)
    db = Database(sqlite_catalog_url)
    ash = make_account(db, "ash", password="pikachu-forever", collection="Binder #1")
    with db.session() as s:
        s.add(Device(id="pi-desk", name="Desk scanner", user_id=ash.user_id, collection_id=ash.collection_id,
                     state="online", bundle_version="2025.01.1", outbox_depth=0))
        from server.collections_service import add_to_stack

        for cid, q, cond, fin in [("base1-4", 1, "LP", "holo"), ("base1-2", 1, "NM", "holo"), ("base1-58", 3, "NM", "normal"),
                                  ("sv1-1", 4, "NM", "normal"), ("sv1-2", 1, "MP", "reverse_holo"), ("sv1-10", 2, "NM", "normal"),
                                  ("base1-24", 1, "HP", "normal"), ("sv1-4", 1, "NM", "normal"), ("base1-44", 2, "DMG", "normal"),
                                  ("sv1-7", 1, "NM", "normal"), ("base1-15", 1, "NM", "holo"), ("sv1-3", 2, "LP", "normal")]:
            add_to_stack(s, ash.collection_id, cid, q, condition=cond, finish=fin)
        from server.prices import import_prices

        feed = "card_id,finish,low,mid,market,date\n" + "".join(
            f"{c},{f},{m * 0.8:.2f},{m:.2f},{m * 1.1:.2f},2025-06-0{d}\n"
            for c, f, m in [("base1-4", "holo", 310.0), ("base1-2", "holo", 95.0), ("base1-15", "holo", 70.0),
                            ("base1-58", "normal", 4.5), ("sv1-1", "normal", 0.1), ("sv1-10", "normal", 0.35)]
            for d in (1, 8))
        assert not import_prices(s, feed.encode()).errors
    # A real crop for the review queue: the catalog image of Charizard, shrunk and JPEG-encoded.
    img = cv2.imread(str(shared_data / "PTCGextension" / "cards" / "sv1-5" / "sv1-5.png"))
    crop = cv2.imencode(".jpg", cv2.resize(img, (160, 223)))[1].tobytes() if img is not None else b""
    scans = [add_scan(db, device_id="pi-desk", collection_id=ash.collection_id, seq=i + 1, card_id=c, crop=crop or None,
                      candidates=[{"card_id": c, "score": 0.62}, {"card_id": alt, "score": 0.58}], quality_flag=flag)
             for i, (c, alt, flag) in enumerate([("sv1-5", "sv1-6", None), ("sv1-8", "sv1-9", "glare"),
                                                    ("sv1-11", "sv1-12", "low_score")])]
    app = create_app(settings, db)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield {"url": f"http://127.0.0.1:{port}", "db": db, "ash": ash, "scans": scans}
    server.should_exit = True
    t.join(10)
    db.dispose()


def _shot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    if os.environ.get("SCANEMON_UPDATE_SCREENSHOTS"):
        docs = ROOT / "docs" / "screenshots"
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, docs / name)
    return path


def test_login_filter_card_review_in_chromium(live_server):
    from playwright.sync_api import sync_playwright

    url, ash = live_server["url"], live_server["ash"]
    console: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        try:
            # Login (redirected there from the collection page, then back).
            page.goto(f"{url}/collections/{ash.collection_id}")
            assert "/login" in page.url
            page.fill("#username", "ash")
            page.fill("#password", "wrong-password")
            page.click("#login-submit")
            assert page.locator("#login-error").is_visible()
            page.fill("#username", "ash")
            page.fill("#password", "pikachu-forever")
            page.click("#login-submit")
            page.wait_for_url(f"{url}/collections/{ash.collection_id}")
            assert page.locator("#grid .tile").count() == 12
            # Catalog images load from /images/cards/{id} (real PNGs for sv1, placeholder for base1).
            # Poll from Python: wait_for_function's string predicate needs eval(), which our CSP (rightly) forbids.
            deadline = time.monotonic() + 15
            while not page.evaluate("Array.from(document.images).every(i => i.complete)"):
                assert time.monotonic() < deadline, "catalog images did not load"
                time.sleep(0.1)
            sv1_ok = page.evaluate("Array.from(document.querySelectorAll('.tile[data-card-id^=sv1] img'))"
                                   ".every(i => i.naturalWidth > 100)")
            assert sv1_ok
            _shot(page, "collection.png")

            # Filter: set + search, through the form.
            page.select_option("#f-set", "base1")
            page.fill("#q", "char")
            page.click("#apply-filters")
            page.wait_for_load_state()
            names = page.locator("#grid .tile .name").all_inner_texts()
            assert names and all("Char" in n for n in names), names
            assert "q=char" in page.url and "set=base1" in page.url
            page.select_option("#f-set", "")
            page.fill("#q", "")
            page.select_option("#f-condition", "LP")
            page.click("#apply-filters")
            page.wait_for_load_state()
            assert sorted(page.locator("#grid .tile").evaluate_all("ts => ts.map(t => t.dataset.cardId)")) == ["base1-4", "sv1-3"]
            _shot(page, "collection-filtered.png")

            # Card detail.
            page.click(".tile[data-card-id='sv1-3'] a")
            page.wait_for_load_state()
            assert page.locator("#card-name").inner_text() == "Shroomish"

            # Review: confirm the first scan with the suggested card.
            page.click("nav >> text=Review")
            page.wait_for_load_state()
            assert page.locator(".review-item").count() == 3
            # the second scan's frame had glare: the reviewer sees why its crop may be poor
            assert page.locator(f"#scan-{live_server['scans'][1]} .flag").inner_text() == "glare"
            assert page.locator(f"#scan-{live_server['scans'][0]} .flag").count() == 0
            # the third matched nothing on the device (low_score): maybe not a catalog card at all
            assert page.locator(f"#scan-{live_server['scans'][2]} .flag").inner_text() == "unmatched on the device"
            _shot(page, "review.png")
            first = live_server["scans"][0]
            page.locator(f"#scan-{first} button.confirm").click()
            page.wait_for_load_state()
            assert page.locator("#review-done").inner_text().startswith("Saved: confirm")
            assert page.locator(".review-item").count() == 2

            # Devices page lists the scanner.
            page.click("nav >> text=Devices")
            page.wait_for_load_state()
            assert "Desk scanner" in page.content()
        finally:
            browser.close()
    with live_server["db"].session() as s:
        assert s.scalar(select(CollectionItem.quantity).where(CollectionItem.collection_id == ash.collection_id,
                                                              CollectionItem.card_id == "sv1-5")) == 1
    csp = [m for m in console if "Content Security Policy" in m]
    assert not csp, csp
