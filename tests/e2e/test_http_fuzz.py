"""Schemathesis against a real stack's OpenAI API: cases generated from the gateway's own
``/openapi.json`` (bodies that fit the schema and bodies that break it, with a valid, a
wrong or no API key; the model is often set to the served one so that generation really
runs) get no 5xx and no hang, and the stack still serves a normal request, token for token,
afterwards.

``KVFLEET_HTTP_FUZZ_CASES`` sets the campaign size (CI runs a few hundred; the full campaign
is ``KVFLEET_HTTP_FUZZ_CASES=10000 pytest -s tests/e2e/test_http_fuzz.py``, which prints the
status codes it saw).
"""

from __future__ import annotations

import collections
import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from kvfleet.common.config import EngineSettings, FleetConfig, ModelConfig, WorkerConfig
from kvfleet.common.launcher import launch
from tests.e2e.conftest import TINY

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
TOTAL_CASES = int(os.environ.get("KVFLEET_HTTP_FUZZ_CASES", "400"))
KEY = "sk-fuzz"
MAX_TOKENS = 8  # the gateway's max_tokens_limit here: generated requests finish quickly
CALL_TIMEOUT_S = 120.0
BATCH = 250  # cases per Hypothesis run  # a reply slower than this is a hang
# (method, path, share of the cases, modes)
OPERATIONS = (
    ("POST", "/v1/completions", 0.42, (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)),
    ("POST", "/v1/chat/completions", 0.42, (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)),
    ("GET", "/v1/models", 0.1, (GenerationMode.POSITIVE,)),
    ("GET", "/health", 0.02, (GenerationMode.POSITIVE,)),
    ("GET", "/livez", 0.02, (GenerationMode.POSITIVE,)),
    ("GET", "/metrics", 0.02, (GenerationMode.POSITIVE,)),
)


@pytest.fixture(scope="module")
def fuzz_stack(reference, tmp_path_factory):
    fleet = FleetConfig(
        models=[ModelConfig(name=TINY)],
        workers=[WorkerConfig(id="f0", memory_bytes=400_000_000, models=[TINY])],
        http_port=0, grpc_port=0, api_keys=[KEY],
        engine=EngineSettings(max_num_seqs=16, num_threads=1),
        gateway={"max_tokens_limit": MAX_TOKENS, "default_max_tokens": MAX_TOKENS},
    )
    s = launch(fleet, tmp_path_factory.mktemp("fuzz-stack"), timeout_s=600)
    yield s
    s.stop()


def _cases(operation, mode, n: int) -> list[tuple[object, str | None, str]]:
    """``n`` (case, model override, key) triples drawn by Schemathesis' strategy, in batches
    (a fresh Hypothesis run each, so one long run's bookkeeping cannot trip it up)."""
    import torch

    out: list[tuple[object, str | None, str]] = []
    strategy = st.tuples(operation.as_strategy(generation_mode=mode),
                         st.sampled_from([None, TINY, TINY]),
                         st.sampled_from([KEY] * 18 + ["", "sk-wrong"]))
    # the in-process reference engine flushes denormals to zero, which Hypothesis' float
    # strategies refuse to run under: generate with IEEE floats, then put it back
    torch.set_flush_denormal(False)
    try:
        for batch in range(10 * (n // BATCH + 1)):
            if len(out) >= n:
                break

            @seed(batch)
            @settings(max_examples=min(BATCH, n - len(out)), deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(strategy)
            def collect(item) -> None:
                out.append(item)

            try:
                collect()
            except Exception:  # noqa: BLE001  (only drawing runs here)
                # Schemathesis' negative mode keeps state between draws, which Hypothesis
                # may flag as flaky generation: keep what was drawn, go on with a new batch
                pass
    finally:
        torch.set_flush_denormal(True)
    return out[:n]


def _send(base_url: str, item) -> tuple[int, str]:
    case, model, key = item
    if model is not None and isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = model
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    t0 = time.monotonic()
    try:
        r = case.call(base_url=base_url, headers=headers, timeout=CALL_TIMEOUT_S)
    except Exception as e:  # a timeout (a hang) or a dropped connection
        return -1, f"{type(e).__name__} after {time.monotonic() - t0:.1f}s: {case.body!r:.300}"
    return r.status_code, f"{r.text[:300]} for {case.body!r:.300}"


@pytest.mark.timeout(600 + TOTAL_CASES)  # the full campaign runs past the 600 s default
def test_schemathesis_cases_get_no_5xx_and_the_stack_still_serves(fuzz_stack, reference):
    url = fuzz_stack.http_url
    schema = schemathesis.openapi.from_url(url + "/openapi.json", wait_for_schema=60)
    items = []
    for method, path, share, modes in OPERATIONS:
        operation = schema[path][method]
        for mode in modes:
            items += _cases(operation, mode, max(3, int(TOTAL_CASES * share / len(modes))))
    statuses: collections.Counter[int] = collections.Counter()
    failures: list[tuple[int, str]] = []
    t0 = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        for status, detail in pool.map(lambda it: _send(url, it), items):
            statuses[status] += 1
            if status < 0 or status >= 500:
                failures.append((status, detail))
    print(f"{len(items)} cases in {time.monotonic() - t0:.0f}s; status codes: "
          f"{dict(sorted(statuses.items()))}")
    assert not failures, failures[:5]
    assert len(items) >= TOTAL_CASES * 0.95
    assert statuses[200] > 0 and statuses[400] > 0  # both accepted and refused cases ran

    # afterwards: ready, and a normal request gets the plain engine's greedy output
    ids = reference.tokenizer.encode("After the storm")
    ref = reference.run(ids, MAX_TOKENS)
    with httpx.Client(base_url=url, timeout=60) as c:
        assert c.get("/health").status_code == 200
        r = c.post("/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                   json={"model": TINY, "prompt": ids, "max_tokens": MAX_TOKENS,
                         "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == ref.text
