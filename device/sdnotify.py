"""A tiny sd_notify(3): READY=1 / WATCHDOG=1 / STATUS=… over $NOTIFY_SOCKET, no dependency.

systemd units in provisioning/templates use ``Type=notify`` and ``WatchdogSec=``: the process says READY
once it is really serving, then pings WATCHDOG=1 from its *main loop* (not from a side thread: the point
is that a wedged loop stops pinging and systemd restarts the process). Outside systemd every call is a
no-op, so code can call it unconditionally.
"""

from __future__ import annotations

import os
import socket
import time


class SdNotify:
    def __init__(self, address: str | None = None):
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        # WATCHDOG_PID names the process systemd expects pings from; a child must not claim it.
        self.watchdog_interval: float | None = (
            int(usec) / 1e6 if usec and usec.isdigit() and (not pid or pid == str(os.getpid())) else None)
        self._last_ping = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, state: str) -> bool:
        """Send one state string ("READY=1", "STATUS=…"); False when not under systemd or on error."""
        if not self.address:
            return False
        addr = self.address
        if addr.startswith("@"):  # abstract namespace socket
            addr = "\0" + addr[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.connect(addr)
                s.sendall(state.encode())
            return True
        except OSError:
            return False

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self, force: bool = False) -> bool:
        """Ping the watchdog; rate-limited to a quarter of WatchdogSec so a hot loop can call it freely."""
        now = time.monotonic()
        if not force and self.watchdog_interval and now - self._last_ping < self.watchdog_interval / 4:
            return True
        self._last_ping = now
        return self.notify("WATCHDOG=1")


_default: SdNotify | None = None


def notifier() -> SdNotify:
    global _default
    if _default is None:
        _default = SdNotify()
    return _default
