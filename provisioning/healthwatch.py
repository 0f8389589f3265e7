"""Run a service under systemd's watchdog by probing its HTTP health endpoint.

``python -m provisioning.healthwatch --url http://127.0.0.1:8000/healthz -- scanemon-server serve``

This process is the unit's main PID (Type=notify, NotifyAccess=main). It starts the command, sends
READY=1 once the URL answers 200, then WATCHDOG=1 after every successful probe. When the service stops
answering, the pings stop and systemd (WatchdogSec) restarts the unit; when the command exits, this exits
with its status so Restart=on-failure applies. SIGTERM/SIGINT are passed on to the command.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
import urllib.request

from device.sdnotify import SdNotify


def probe(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("usage: python -m provisioning.healthwatch --url URL [--interval S] -- COMMAND…", file=sys.stderr)
        return 2
    i = argv.index("--")
    p = argparse.ArgumentParser(prog="provisioning.healthwatch")
    p.add_argument("--url", required=True)
    p.add_argument("--interval", type=float, help="probe interval (default: WatchdogSec/4, else 5 s)")
    p.add_argument("--timeout", type=float, default=5.0)
    args = p.parse_args(argv[:i])
    cmd = argv[i + 1:]
    sd = SdNotify()
    interval = args.interval or (sd.watchdog_interval / 4 if sd.watchdog_interval else 5.0)
    child = subprocess.Popen(cmd)

    def forward(signum, _frame):
        sd.stopping()
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    ready = False
    while True:
        rc = child.poll()
        if rc is not None:
            return rc
        if probe(args.url, args.timeout):
            if not ready:
                sd.ready(f"{args.url} answers")
                ready = True
            sd.watchdog(force=True)
        time.sleep(interval if ready else 0.5)


if __name__ == "__main__":
    sys.exit(main())
