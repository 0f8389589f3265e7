"""A simulated device: records synthetic scans into the real Outbox and runs the real Relay.

    python -m device.relay_sim --config device.yaml --scans 2000 --rate 200 --exit-when-drained

It keeps going from where the outbox says it stopped (``last_seq``), so a simulated device that is
SIGKILLed and started again with the same arguments ends with exactly ``--scans`` scans, numbered
1..N — which is what the reliability suite checks on the server. The appliance loop uses the same
``Outbox``/``Relay`` classes; only the camera and the pipeline are replaced by a counter here.

Mix: every ``--ambiguous-every``-th scan is ambiguous (with a tiny JPEG crop), every
``--no-card-every``-th is no_card, the rest accept a card from ``--cards`` in turn.
Prints one JSON line of relay/outbox statistics at exit.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time

from device.config import load_config
from device.outbox import Outbox, OutboxFull
from device.protocol import Candidate
from device.relay import Relay

TINY_JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 60 + b"\xff\xd9"


def scan_fields(seq: int, cards: list[str], ambiguous_every: int, no_card_every: int, bundle: str) -> dict:
    card = cards[seq % len(cards)]
    if no_card_every and seq % no_card_every == 0:
        return dict(decision="no_card", bundle_version=bundle)
    if ambiguous_every and seq % ambiguous_every == 0:
        other = cards[(seq + 1) % len(cards)]
        return dict(decision="ambiguous", score=0.71, margin=0.01, crop=TINY_JPEG, bundle_version=bundle,
                    candidates=[Candidate(card_id=card, score=0.71), Candidate(card_id=other, score=0.70)])
    return dict(decision="accept", card_id=card, score=0.93, margin=0.2, bundle_version=bundle,
                candidates=[Candidate(card_id=card, score=0.93)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m device.relay_sim", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="device YAML (device.config.DeviceConfig)")
    ap.add_argument("--scans", type=int, required=True, help="total scans this device records (over all runs)")
    ap.add_argument("--rate", type=float, default=100.0, help="scans per second (0: as fast as possible)")
    ap.add_argument("--burst", type=int, default=1, help="scans committed per outbox transaction")
    ap.add_argument("--cards", default="sv1-1,sv1-2,sv1-3", help="card ids for accepted scans")
    ap.add_argument("--ambiguous-every", type=int, default=0)
    ap.add_argument("--no-card-every", type=int, default=0)
    ap.add_argument("--no-relay", action="store_true", help="only record (fill the outbox)")
    ap.add_argument("--exit-when-drained", action="store_true", help="exit once every scan is acked")
    ap.add_argument("--drain-timeout", type=float, default=600.0)
    ap.add_argument("--latency-file", help="write every record→ack latency (seconds, JSON list) here at exit")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    config = load_config(args.config)
    outbox = Outbox.from_config(config)
    relay = None if args.no_relay else Relay(config, outbox).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    cards = args.cards.split(",")
    refused = 0
    t0 = time.monotonic()
    recorded_here = 0
    start_seq = outbox.last_seq
    while not stop.is_set():
        seq = outbox.last_seq
        if seq >= args.scans:
            break
        n = min(args.burst, args.scans - seq)
        try:
            outbox.record_many(scan_fields(seq + 1 + i, cards, args.ambiguous_every, args.no_card_every,
                                           config.bundle_version) for i in range(n))
        except OutboxFull as exc:
            refused += 1
            logging.getLogger("relay_sim").warning("%s", exc)
            stop.wait(0.1)
            continue
        recorded_here += n
        if args.rate > 0:
            lag = t0 + recorded_here / args.rate - time.monotonic()
            if lag > 0:
                stop.wait(lag)
    record_s = time.monotonic() - t0
    drained = None
    if relay is not None and args.exit_when_drained and not stop.is_set():
        deadline = time.monotonic() + args.drain_timeout
        while not stop.is_set() and time.monotonic() < deadline:
            if outbox.depth() == 0:
                break
            stop.wait(0.05)
        drained = outbox.depth() == 0
    elif relay is not None and not args.exit_when_drained:
        stop.wait()
    if relay is not None:
        relay.stop()
    s = outbox.stats()
    report = {"device_id": config.device_id, "recorded_this_run": recorded_here, "start_seq": start_seq,
              "last_seq": s.last_seq, "depth": s.depth, "refused": refused, "record_s": round(record_s, 3),
              "drained": drained, **(relay.stats.as_dict() if relay else {})}
    if args.latency_file and relay is not None:
        with open(args.latency_file, "w") as f:
            json.dump(list(relay.stats.latencies), f)
    print(json.dumps(report), flush=True)
    outbox.close()
    return 0 if drained in (None, True) else 1


if __name__ == "__main__":
    sys.exit(main())
