"""Suite-wide rules.

Under ``.ci/run`` (``KVFLEET_STRICT_SKIPS=1``) a skipped test fails unless its node id matches
an entry of ``tests/skips_allowed.txt``, which says why that skip is acceptable: a test that
cannot run where it should (traces missing, a tool not installed) must not pass silently.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import pytest

ALLOWLIST = Path(__file__).with_name("skips_allowed.txt")


def strict_skips() -> bool:
    return os.environ.get("KVFLEET_STRICT_SKIPS", "") not in ("", "0", "false", "no")


def read_allowlist(path: Path = ALLOWLIST) -> list[tuple[str, str]]:
    """(node id pattern, reason) per line ``PATTERN  # REASON``; a line without a reason is an
    error, so every allowed skip says why."""
    out: list[tuple[str, str]] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pattern, _, reason = line.partition("#")
        if not reason.strip():
            raise ValueError(f"{path.name}:{n}: an allowed skip needs a reason after '#'")
        out.append((pattern.strip(), reason.strip()))
    return out


def skip_allowed(nodeid: str, allowlist: list[tuple[str, str]]) -> bool:
    return any(fnmatch.fnmatchcase(nodeid, pattern) for pattern, _ in allowlist)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or not strict_skips() or hasattr(report, "wasxfail"):
        return
    if skip_allowed(item.nodeid, read_allowlist()):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under KVFLEET_STRICT_SKIPS without an entry in tests/{ALLOWLIST.name}: {reason}"
    )
