"""`kvfleet up` / `down` / `generate` / `chat` as a user runs them."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from kvfleet.common.launcher import _alive

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
FLEET = """
models: [{name: tiny-llama}]
workers: [{id: solo, memory_bytes: 300000000}]
http_port: 0
grpc_port: 0
engine: {num_threads: 1}
"""


def _kvfleet(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvfleet", *args], capture_output=True,
                          text=True, timeout=300, **kw)


def _pids(run_dir) -> list[int]:
    desc = json.loads((run_dir / "stack.json").read_text())
    return [s["pid"] for s in desc["services"]] + [desc["redis_pid"]]


def test_up_detach_generate_chat_down(tmp_path, reference):
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text(FLEET)
    run_dir = tmp_path / "run"
    up = _kvfleet("up", "--config", str(cfg), "--detach", "--run-dir", str(run_dir))
    assert up.returncode == 0, up.stdout + up.stderr
    assert "OpenAI HTTP" in up.stdout and "gateway gRPC" in up.stdout
    pids = _pids(run_dir)
    try:
        ids = reference.tokenizer.encode("Hello")
        ref = reference.run(ids, 8)
        gen = _kvfleet("generate", "Hello", "--max-tokens", "8", "--run-dir", str(run_dir))
        assert gen.returncode == 0, gen.stderr
        assert gen.stdout == ref.text + "\n"
        chat = _kvfleet("chat", "-m", "hi", "--max-tokens", "4", "--run-dir", str(run_dir))
        assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr
        again = _kvfleet("up", "--config", str(cfg), "--detach", "--run-dir", str(run_dir))
        assert again.returncode == 1 and "already running" in again.stderr
        status = _kvfleet("admin", "--run-dir", str(run_dir), "status")
        assert status.returncode == 0 and "solo" in status.stdout and "plan: v1" in status.stdout
    finally:
        down = _kvfleet("down", "--run-dir", str(run_dir))
    assert down.returncode == 0 and "stopped" in down.stdout
    assert not any(_alive(p) for p in pids)
    assert "no stack running" in _kvfleet("down", "--run-dir", str(run_dir)).stdout


@contextlib.contextmanager
def _up_in_the_foreground(tmp_path):
    """`kvfleet up` in the foreground, once it has printed its endpoints: (process, run dir,
    the lines it printed). Whatever the test leaves running is stopped after it."""
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text(FLEET)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "kvfleet", "up", "--config", str(cfg),
                             "--run-dir", str(run_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:  # the launcher prints the endpoints once all serve
            lines.append(line)
            if "Ctrl-C" in line:
                break
        yield proc, run_dir, lines
    finally:
        if proc.poll() is None:
            proc.kill()
        _kvfleet("down", "--run-dir", str(run_dir))


def test_up_in_the_foreground_stops_everything_on_ctrl_c(tmp_path):
    with _up_in_the_foreground(tmp_path) as (proc, run_dir, lines):
        assert any("OpenAI HTTP" in x for x in lines), "".join(lines)
        pids = _pids(run_dir)
        assert all(_alive(p) for p in pids)
        os.kill(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "stopped" in out
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids):
            assert time.monotonic() < deadline, "a service outlived `kvfleet up`"
            time.sleep(0.05)
        assert not (run_dir / "stack.json").exists()


def test_services_stop_when_the_process_that_started_them_is_killed(tmp_path):
    """SIGKILL leaves `kvfleet up` no chance to stop its stack; the services notice they were
    orphaned and stop themselves, rather than serving (and using CPU) with nobody to stop them.
    """
    with _up_in_the_foreground(tmp_path) as (proc, run_dir, _):
        desc = json.loads((run_dir / "stack.json").read_text())
        services = [s["pid"] for s in desc["services"]]
        assert len(services) >= 4 and all(_alive(p) for p in services)
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in services):
            assert time.monotonic() < deadline, "a service outlived the killed `kvfleet up`"
            time.sleep(0.1)
