"""``make reliability``: run the reliability suite and end with one line
``scans=N lost=L duplicated=D dead_lettered=X`` (exit status is pytest's)."""

from __future__ import annotations

import sys

import pytest

from tests.reliability import harness


def main(argv: list[str] | None = None) -> int:
    args = ["-m", "slow", "-p", "no:cacheprovider", "-q", "-s", "tests/reliability", *(argv or sys.argv[1:])]
    rc = int(pytest.main(args))
    print(harness.summary_line(harness.RESULTS) if harness.RESULTS else "scans=0 lost=0 duplicated=0 dead_lettered=0 (no test ran)")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
