"""Run one benchmark and keep its figures with the command and the machine that produced them.

    python -m tests.bench.results run NAME --json RAW.json [--target make-target] -- CMD ARGS...

runs CMD (its output streams through), then reads the JSON it wrote (RAW.json) and stores
``var/reports/bench/NAME.json`` = {name, target, command, machine, started_at, wall_s, raw}. The report
(``python -m tests.bench.report``) turns those files into one table. Wrapping instead of editing each script
keeps the benchmarks runnable on their own and makes every row say exactly how it was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "var" / "reports" / "bench"


def machine() -> dict:
    """What the figures depend on: CPU, cores, memory, load while measuring."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {"arch": platform.machine(), "cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem_gib,
            "python": platform.python_version(), "os": platform.platform(terse=True),
            "hostname": platform.node(), "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def describe(m: dict) -> str:
    """One short line for a report cell."""
    return (f"{m.get('arch')} {m.get('cores')}-core {m.get('cpu')}, {m.get('memory_gib')} GiB "
            f"(1-min load {m.get('loadavg_1m')}, the benchmark included)")


def _display(cmd: list[str]) -> str:
    """The command as a reader would type it: repository-relative, the venv's python as .venv/bin/python."""
    out = []
    for part in cmd:
        p = Path(part)
        if p.is_absolute():
            try:
                part = str(p.relative_to(ROOT))
            except ValueError:
                pass
        out.append(part)
    return shlex.join(out)


def run(name: str, raw_json: Path, cmd: list[str], target: str | None) -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw_json.parent.mkdir(parents=True, exist_ok=True)
    raw_json = Path(raw_json)
    raw_json.unlink(missing_ok=True)  # a stale file must never pass for this run's figures
    started = datetime.now(timezone.utc)
    m0 = machine()
    t0 = time.monotonic()
    rc = subprocess.run(cmd).returncode
    wall = time.monotonic() - t0
    m1 = machine()
    m0["loadavg_1m"] = max(m0["loadavg_1m"] or 0, m1["loadavg_1m"] or 0)  # the busier end: figures may be pessimistic
    if rc != 0 or not raw_json.is_file():
        print(f"bench {name}: command failed (rc={rc}) or wrote no {raw_json}; nothing recorded", file=sys.stderr)
        return rc or 1
    record = {"name": name, "target": target, "command": _display(cmd), "machine": m0,
              "started_at": started.isoformat(timespec="seconds"), "wall_s": round(wall, 1),
              "raw": json.loads(raw_json.read_text())}
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(record, indent=2))
    print(f"bench {name}: recorded {out} ({wall:.0f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print(__doc__, file=sys.stderr)
        return 2
    k = argv.index("--")
    ap = argparse.ArgumentParser(prog="python -m tests.bench.results")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("name")
    r.add_argument("--json", required=True, type=Path, help="the JSON file the command writes")
    r.add_argument("--target", default=None, help="make target that runs this (shown in the report)")
    a = ap.parse_args(argv[:k])
    cmd = argv[k + 1:]
    if not cmd:
        ap.error("no command after --")
    return run(a.name, a.json, cmd, a.target)


if __name__ == "__main__":
    raise SystemExit(main())
