"""The curl examples of README.md's "API with examples", run verbatim against a real server.

The section's shell lines (curl, ``TOKEN=$(scanemon-server users token …)``) are extracted from the README
and run by bash against ``scanemon-server serve`` on SQLite with the real sv1 catalog, its resolver catalog
rendered by ``python -m models.synth catalog --sets sv1``, and three scans waiting in the review queue.
Every curl gets ``--fail-with-body``, so a wrong path, method, body or scope fails the test. Only the
placeholders are substituted: ``$S`` (the server), ``SCAN_ID`` (one queued scan per decision),
``photo.jpg`` (a real sv1 scan).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import free_port, stop_process, wait_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def api_section_commands() -> list[str]:
    """Shell commands of the README's API section: fenced sh blocks, backslash continuations joined."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^## API with examples\n(.*?)^## ", text, re.M | re.S)
    assert m, "README.md has no '## API with examples' section"
    section = m.group(1)
    cmds: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        block = re.sub(r"\\\n\s*", "", block)
        for line in block.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                cmds.append(line)
    # The inline fleet example outside the code blocks.
    cmds += re.findall(r"`(curl [^`]+)`", section)
    return cmds


def strip_comment(cmd: str) -> str:
    # Comments in the README follow two or more spaces and a '#'; URLs never contain that.
    return re.split(r"\s{2,}#", cmd)[0].strip()


@pytest.fixture
def live_server(tmp_path, shared_data):
    if not shutil.which("curl"):
        pytest.skip("curl not found")
    from tests.collection_fixtures import import_sets

    db_file = tmp_path / "scanemon.db"
    url = f"sqlite:///{db_file}"
    import_sets(url, shared_data, ("sv1",))
    catalog = tmp_path / "catalog"
    res = subprocess.run([sys.executable, "-m", "models.synth", "catalog", "--pokemon-tcg-data",
                          str(shared_data / "pokemon-tcg-data"), "--images", str(shared_data / "PTCGextension" / "cards"),
                          "--sets", "sv1", "--out", str(catalog)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANEMON_")}
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", SCANEMON_DATABASE_URL=url, SCANEMON_DATA_DIR=str(tmp_path / "data"),
               SCANEMON_RESOLVER__CATALOG_DIR=str(catalog), SCANEMON_READYZ_CHECK_BROKER="false")
    # The README's `users create alice` prompts for the password; the same command reads it from stdin here.
    res = subprocess.run([str(BIN / "scanemon-server"), "users", "create", "alice", "--password-stdin"],
                         input="correct horse battery\n", capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    port = free_port()
    proc = subprocess.Popen([str(BIN / "scanemon-server"), "serve", "--port", str(port)], env=env, cwd=tmp_path,
                            stdout=open(tmp_path / "server.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            wait_port(port, timeout=90)
        except TimeoutError:
            pytest.fail(f"server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
        yield {"url": f"http://127.0.0.1:{port}", "env": env, "db_url": url, "dir": tmp_path}
    finally:
        stop_process(proc)


def queue_scans(db_url: str, crop: bytes, n: int) -> list[str]:
    """n ambiguous scans of alice's first collection, waiting for review (suggestion: sv1-13)."""
    from server.db.session import Database
    from tests.collection_fixtures import add_scan

    db = Database(db_url)
    try:
        return [add_scan(db, device_id="counter-01", collection_id=1, seq=i + 1, crop=crop,
                         candidates=[{"card_id": "sv1-13", "score": 0.61}, {"card_id": "sv1-113", "score": 0.59}])
                for i in range(n)]
    finally:
        db.dispose()


def test_readme_api_examples_run(live_server, shared_data):
    import cv2

    srv = live_server
    work = srv["dir"] / "work"
    work.mkdir()
    # photo.jpg: the real sv1-13 scan as a JPEG upload.
    img = cv2.imread(str(shared_data / "PTCGextension" / "cards" / "sv1-13" / "sv1-13.png"))
    assert cv2.imwrite(str(work / "photo.jpg"), img)
    crop = (work / "photo.jpg").read_bytes()
    cmds = [strip_comment(c) for c in api_section_commands()]
    assert any(c.startswith("TOKEN=$(scanemon-server users token alice") for c in cmds), cmds

    def is_decision(c: str) -> bool:  # POSTs (explicit, or implied by a -d body) on one queued scan
        return "SCAN_ID/" in c and ("-X POST" in c or " -d " in c)

    decisions = [c for c in cmds if is_decision(c)]
    scan_ids = queue_scans(srv["db_url"], crop, len(decisions))
    next_decision = iter(scan_ids)
    script = ["set -euo pipefail", 'curl() { command curl -sS --fail-with-body "$@"; echo; }']
    run: list[str] = []
    for c in cmds:
        if c.startswith("scanemon-server users create"):
            continue  # interactive; done in the fixture with --password-stdin
        if c.startswith("S="):
            c = f"S={srv['url']}"
        if "SCAN_ID" in c:
            # One queued scan per decision; the crop download (before them) looks at the first one.
            c = c.replace("SCAN_ID", next(next_decision) if is_decision(c) else scan_ids[0])
        script += [f"echo '>>> {len(run)}'", c]
        run.append(c)
    res = subprocess.run(["bash", "-c", "\n".join(script)], cwd=work, env=srv["env"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, f"a README example failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    parts = re.split(r"^>>> (\d+)\n", res.stdout, flags=re.M)
    out = {int(parts[i]): parts[i + 1] for i in range(1, len(parts), 2)}

    def output_of(path: str) -> str:
        """Output of the first example whose URL path is exactly ``path`` (query string allowed)."""
        hits = [i for i, c in enumerate(run) if re.search(re.escape(path) + r"(?=$|[\s\"?])", c)]
        assert hits, f"no README example calls {path!r}"
        return out[hits[0]]

    assert json.loads(output_of("/api/v1/me"))["username"] == "alice"
    assert json.loads(output_of("/api/v1/me/tokens"))["scopes"] == ["read"]
    cards = json.loads(output_of("/api/v1/cards"))
    assert [c["id"] for c in cards["items"]] == ["sv1-13"] and cards["total"] == 1
    ident = json.loads(output_of("/api/v1/identify"))
    assert ident["cards"] and ident["cards"][0]["card_id"] == "sv1-13", ident
    assert json.loads(output_of("/api/v1/collections"))[0]["name"] == "My collection"
    review = json.loads(output_of("/api/v1/review"))
    assert len(review["items"]) == len(decisions)
    assert json.loads(output_of("/confirm"))["status"] == "confirmed"
    corrected = json.loads(output_of("/correct"))
    assert corrected["status"] == "corrected" and corrected["card_id"] == "sv1-13"
    assert json.loads(output_of("/reject"))["status"] == "rejected"
    assert "devices" in json.loads(output_of("/api/v1/fleet/devices"))
    items = json.loads(output_of("/api/v1/collections/1/items"))
    assert items["items"] == [] or all(i["card_id"] == "sv1-13" for i in items["items"])
    assert (work / "crop.jpg").read_bytes() == crop
    assert (work / "binder.csv").read_text().startswith("Quantity,Name,")
