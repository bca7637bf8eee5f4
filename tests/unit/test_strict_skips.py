"""Under .ci/run a skip fails unless tests/skips_allowed.txt names it with a reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import read_allowlist, skip_allowed

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_allowlist_entries_all_give_a_reason(tmp_path):
    entries = read_allowlist()
    assert entries and all(reason for _, reason in entries)
    bad = tmp_path / "allow.txt"
    bad.write_text("tests/x.py::test_y\n")
    with pytest.raises(ValueError, match="needs a reason"):
        read_allowlist(bad)
    assert skip_allowed("tests/integration/load/test_http_peer.py::test_a", entries)
    assert not skip_allowed("tests/unit/workload/test_readers.py::test_a", entries)


@pytest.mark.parametrize("strict", [False, True])
def test_a_skip_fails_under_strict_skips(tmp_path, strict):
    """The trace readers skip without the shared traces; under .ci/run that is a failure."""
    env = {**os.environ, "KVFLEET_TRACES_DIR": str(tmp_path)}
    env.pop("KVFLEET_STRICT_SKIPS", None)
    if strict:
        env["KVFLEET_STRICT_SKIPS"] = "1"
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/unit/workload/test_readers.py", "-k", "figures_match_readme"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    if strict:
        assert out.returncode == 1, out.stdout
        assert "3 failed" in out.stdout and "skips_allowed.txt" in out.stdout
    else:
        assert out.returncode == 0, out.stdout
        assert "3 skipped" in out.stdout
