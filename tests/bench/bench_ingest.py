"""Ingest load benchmark: N simulated devices → real Mosquitto → ingest worker(s) → real PostgreSQL.

    .venv/bin/python -m tests.bench.bench_ingest --devices 4 --rate 600 --seconds 20 --workers 1

Each device is a ``python -m device.relay_sim`` process (real Outbox + Relay; outbox on tmpfs so the
benchmark measures ingest, not this machine's fsync). Prints stored scans/s, p50/p99 record→ack
latency, loss/duplicates, and the CPU used by the broker, the ingest worker(s) and PostgreSQL.
Goal: ≥ 2,000 scans/s stored with zero loss.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil
from sqlalchemy import func, select

from server.db.migrate import upgrade
from server.db.models import Scan
from tests.reliability.conftest import Stack
from tests.reliability.harness import verify
from tests.services import Mosquitto, Postgres


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
            for c in p.children(recursive=True):
                ct = c.cpu_times()
                total += ct.user + ct.system
        except psutil.NoSuchProcess:
            pass
    return total


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))] if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=4)
    ap.add_argument("--rate", type=float, default=600.0, help="scans/s per device")
    ap.add_argument("--seconds", type=float, default=20.0, help="recording time per device")
    ap.add_argument("--workers", type=int, default=1, help="ingest worker processes (shared subscription)")
    ap.add_argument("--batch-max", type=int, default=50, help="device relay batch size")
    ap.add_argument("--ingest-batch", type=int, default=500, help="ingest scans per commit")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json-out", default=None, help="also write the figures as JSON (for make bench's report)")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="scanemon-bench-"))
    pg = Postgres().start()
    broker = Mosquitto(work / "mosq").start()
    stack = None
    try:
        url = pg.create_database("bench")
        upgrade(url)
        stack = Stack(work, url, broker)
        per_device = int(args.rate * args.seconds)
        workers = []
        for k in range(args.workers):
            w = stack.ingest(k)
            w.env = {"SCANEMON_INGEST__BATCH_SIZE": str(args.ingest_batch)}
            workers.append(w.start())
        for w in workers:
            w.wait_subscribed()
        devices = [stack.device(f"bench-{i:03d}", scans=per_device, rate=args.rate, burst=max(1, int(args.rate / 100)),
                                batch_max=args.batch_max, inflight_window=1000, ack_timeout_s=30,
                                extra_args=("--latency-file", str(work / f"lat-{i}.json")))
                   for i in range(args.devices)]
        pg_procs = [p for p in psutil.process_iter(["name", "cmdline"])
                    if p.info["name"] == "postgres" and str(pg.data) in " ".join(p.info["cmdline"] or [])]
        broker_p = [psutil.Process(broker.proc.pid)]
        cpu0 = (cpu_seconds(broker_p), cpu_seconds([psutil.Process(w.proc.pid) for w in workers]), cpu_seconds(pg_procs))
        t0 = time.monotonic()
        for d in devices:
            d.start()
        dev_ps = [psutil.Process(d.proc.pid) for d in devices]
        psutil.cpu_percent()
        dev_cpu = 0.0
        while any(d.alive() for d in devices):
            dev_cpu = max(dev_cpu, cpu_seconds(dev_ps))
            time.sleep(0.5)
        machine = psutil.cpu_percent()
        reports = [d.wait(args.seconds * 10 + 120) for d in devices]
        wall = time.monotonic() - t0
        cpu1 = (cpu_seconds(broker_p), cpu_seconds([psutil.Process(w.proc.pid) for w in workers]), cpu_seconds(pg_procs))
        with stack.db.session() as s:
            first, last, n = s.execute(select(func.min(Scan.received_at), func.max(Scan.received_at),
                                              func.count())).one()
        span = max((last - first).total_seconds(), 1e-3)
        verdicts = [verify(stack.db, d.device_id, per_device) for d in devices]
        lat: list[float] = []
        for i in range(args.devices):
            lat += json.loads((work / f"lat-{i}.json").read_text())
        lost = sum(v.lost for v in verdicts)
        dup = sum(v.duplicated for v in verdicts)
        offered = args.devices * args.rate
        print(f"devices={args.devices} offered={offered:.0f} scans/s workers={args.workers} "
              f"relay_batch={args.batch_max} ingest_batch={args.ingest_batch}")
        print(f"stored={n} scans in {span:.1f}s -> {n / span:.0f} scans/s stored (wall {wall:.1f}s incl. start-up)")
        print(f"scan->ack latency (record on device to ack back): p50={1000 * pct(lat, 0.5):.0f} ms "
              f"p99={1000 * pct(lat, 0.99):.0f} ms (n={len(lat)})")
        print(f"lost={lost} duplicated={dup} drained={all(r.get('drained') for r in reports)}")
        print(f"cpu (share of one core over {wall:.1f}s): broker={100 * (cpu1[0] - cpu0[0]) / wall:.0f}% "
              f"ingest={100 * (cpu1[1] - cpu0[1]) / wall:.0f}% postgres={100 * (cpu1[2] - cpu0[2]) / wall:.0f}% "
              f"devices={100 * dev_cpu / wall:.0f}% machine={machine:.0f}% of {psutil.cpu_count()} cores")
        ok = lost == 0 and dup == 0 and n / span >= 2000
        print("goal >= 2000 scans/s with zero loss:", "MET" if ok else "NOT MET")
        if args.json_out:
            Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json_out).write_text(json.dumps({
                "devices": args.devices, "workers": args.workers, "offered_per_s": offered, "stored": n,
                "stored_per_s": round(n / span, 1), "ack_p50_ms": round(1000 * pct(lat, 0.5), 1),
                "ack_p99_ms": round(1000 * pct(lat, 0.99), 1), "lost": lost, "duplicated": dup,
                "cpu_share_of_one_core": {"broker": round((cpu1[0] - cpu0[0]) / wall, 3),
                                          "ingest": round((cpu1[1] - cpu0[1]) / wall, 3),
                                          "postgres": round((cpu1[2] - cpu0[2]) / wall, 3)},
                "goal_met": ok}, indent=2))
        return 0 if lost == 0 and dup == 0 else 1
    finally:
        if stack is not None:
            stack.close()
        broker.stop()
        pg.cleanup()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work dir: {work}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
