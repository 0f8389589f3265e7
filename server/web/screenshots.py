"""Screenshots of the web page in headless Chromium (Playwright driving Debian's /usr/bin/chromium).

    python -m server.web.screenshots URL OUT_DIR --username demo --password scanemon-demo

Logs in through the real login form, then saves the collection grid, the review queue and the devices page
as full-page PNGs. ``make demo``'s ``--screenshots DIR`` calls this after the demo stack is scanned. Needs the
``dev`` extra (playwright) and Debian's chromium; it never downloads a browser.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps dialling Google's hosts, which a closed network refuses.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def _wait_images(page, timeout_s: float = 10.0) -> None:
    """Card images load lazily; poll from Python (the CSP forbids the eval that wait_for_function needs)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pending = page.locator("img").evaluate_all("els => els.filter(e => !e.complete).length")
        if not pending:
            return
        time.sleep(0.2)


def capture(url: str, out_dir: Path, username: str, password: str, *, width: int = 1280) -> list[Path]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise RuntimeError("screenshots need playwright (pip install '.[dev]')") from exc
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"screenshots need Debian's chromium at {CHROMIUM} (apt install chromium)")
    out_dir.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(f"{url}/login")
            page.fill("#username", username)
            page.fill("#password", password)
            page.click("#login-submit")
            page.wait_for_load_state()
            if "/login" in page.url:
                raise RuntimeError(f"login as {username!r} failed at {url}")
            page.goto(f"{url}/collections")
            page.wait_for_load_state()
            link = page.locator("a[href^='/collections/']").first
            targets = []
            if link.count():
                href = link.get_attribute("href") or ""
                if re.fullmatch(r"/collections/\d+", href):
                    targets.append(("collection", href))
            targets += [("review", "/review"), ("devices", "/devices")]
            for name, path in targets:
                page.goto(f"{url}{path}")
                page.wait_for_load_state()
                _wait_images(page)
                dest = out_dir / f"demo-{name}.png"
                page.screenshot(path=str(dest), full_page=True)
                saved.append(dest)
        finally:
            browser.close()
    return saved


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m server.web.screenshots", description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--username", required=True)
    ap.add_argument("--password", required=True)
    a = ap.parse_args(argv)
    for p in capture(a.url.rstrip("/"), a.out_dir, a.username, a.password):
        print(f"screenshot: {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
