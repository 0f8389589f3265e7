"""Hooks ingest calls after a commit.

Hooks run on the ingest worker's thread after the scans are committed (and acked), once per newly
stored scan: a duplicate never triggers a hook twice. An exception in a hook is logged and ignored;
ingest must not stall because a downstream consumer is broken.
"""

from __future__ import annotations

import logging

from device.protocol import Scan

log = logging.getLogger(__name__)


def on_ambiguous(scan: Scan) -> None:
    """A new ambiguous scan is stored with status ``pending`` (look it up by device_id + scan_id).

    The resolver worker (server/resolver/worker.py) shortlists with the server model + FAISS, then sets
    the scan to ``resolved`` (counted into the collection) or ``needs_review``, and publishes a
    ``ScanResult`` to the device.
    """
    log.debug("ambiguous scan %s from %s waits for the resolver", scan.scan_id, scan.device_id)
    # Non-blocking wake-up of an in-process resolver worker; the worker polls anyway, so when the resolver
    # is down or slow the scan just stays pending (ingest never waits on it).
    from server.resolver.worker import notify

    notify(scan.device_id, scan.scan_id)
