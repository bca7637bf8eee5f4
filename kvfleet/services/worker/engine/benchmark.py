"""One workload through four paths, in one process: the kvfleet engine, transformers
``generate`` (static batch), transformers ``generate_batch`` (continuous batching) and the
bare forward passes of the same batches through each model (no engine), all in one dtype.

Two references bound the engine: the hardware roofline (the machine's measured GEMM FLOP/s
and memory bandwidth against the FLOPs and bytes of the same batches, ``roofline.py``),
reported for the prefill step and the decode steps separately, and the faster of the two
bare forward loops.

Throughput is output tokens per second. The same prompts, greedy, exact output lengths.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Workload:
    model: str = "smollm2-135m"
    num_requests: int = 16
    prompt_tokens: int = 128
    output_tokens: int = 64
    seed: int = 0
    repeats: int = 2
    num_threads: int | None = None
    default_cache_path: bool = True  # also time generate_batch with its default cache sizing
    dtype: str = "float32"  # kvfleet and transformers alike
    compile: str = "off"  # the engine's compile setting

    def prompts(self, vocab_size: int) -> list[list[int]]:
        rng = random.Random(self.seed)
        # skip the low ids (special tokens); any ordinary token ids make a valid prompt
        return [
            [rng.randrange(100, vocab_size) for _ in range(self.prompt_tokens)]
            for _ in range(self.num_requests)
        ]


@dataclass(frozen=True, slots=True)
class BenchResult:
    kvfleet_tok_s: float
    hf_generate_tok_s: float
    hf_generate_batch_tok_s: float
    roofline_tok_s: float
    roofline_hf_forward_tok_s: float
    roofline_kvfleet_forward_tok_s: float
    hf_generate_batch_default_cache_tok_s: float | None
    kvfleet_vs_hf_generate: float
    kvfleet_vs_hf_generate_batch: float
    kvfleet_vs_roofline: float
    kvfleet_vs_hw_roofline: float
    kvfleet_vs_hw_roofline_decode: float
    kvfleet_vs_hw_roofline_prefill: float
    bare_forward_vs_hw_roofline_decode: float
    bare_forward_vs_hw_roofline_prefill: float
    hw_roofline: dict[str, object]
    seconds: dict[str, float]
    workload: dict[str, object]
    outputs_match_hf_generate: bool
    tokens_before_divergence: list[int]  # per request, against HF generate in the same dtype

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class SplitTimer:
    """Seconds of a path's prefill step and of its decode steps, for the run that counts."""

    def __init__(self) -> None:
        self.last: tuple[float, float] | None = None  # (prefill_s, decode_s) of the last run
        self.best: tuple[float, float] | None = None

    def record(self, prefill_s: float, decode_s: float) -> None:
        self.last = (prefill_s, decode_s)

    def keep_if_best(self, is_best: bool) -> None:
        if is_best and self.last is not None:
            self.best = self.last


def _best_interleaved(
    paths: dict[str, Callable[[], list[list[int]]]],
    repeats: int,
    splits: dict[str, SplitTimer] | None = None,
) -> tuple[dict[str, float], dict[str, list[list[int]]]]:
    """Best time per path; repeats go round-robin over the paths so that a noisy moment on
    a shared machine does not land on one path only. A path's split times are those of its
    best run."""
    best = {k: float("inf") for k in paths}
    outs: dict[str, list[list[int]]] = {}
    splits = splits or {}
    for _ in range(repeats):
        for name, fn in paths.items():
            t0 = time.perf_counter()
            outs[name] = fn()
            took = time.perf_counter() - t0
            if name in splits:
                splits[name].keep_if_best(took < best[name])
            best[name] = min(best[name], took)
            log.info("%s: %.2f s", name, took)
    return best, outs


def tokens_before_divergence(a: list[list[int]], b: list[list[int]]) -> list[int]:
    """Per request: how many leading tokens two runs share."""
    out = []
    for x, y in zip(a, b, strict=True):
        n = 0
        for p, q in zip(x, y, strict=False):
            if p != q:
                break
            n += 1
        out.append(n)
    return out


def _bare_kvfleet(
    eng, model: str, prompts: list[list[int]], n_out: int, timer: SplitTimer
) -> Callable[[], list[list[int]]]:  # type: ignore[no-untyped-def]
    """The engine's own batches (one prefill of every prompt, then decode steps) through the
    model's forward alone: metadata prepared up front, no scheduler, sampler or detokenizer."""
    from kvfleet.services.worker.engine.batch_builder import build_batch
    from kvfleet.services.worker.engine.sequence import Sequence
    from kvfleet.services.worker.engine.types import EngineRequest, SamplingParams

    m = eng.model(model)
    tpp = m.layout.tokens_per_page
    seqs = []
    for i, p in enumerate(prompts):
        req = EngineRequest(f"bare-{i}", model, tuple(p), SamplingParams(max_tokens=n_out))
        seq = Sequence(req, i, None, 1 << 30)
        seq.pages = eng.pool.allocate(-(-(len(p) + n_out) // tpp)) or []
        seqs.append(seq)
    batches = [build_batch([(s, len(s.tokens)) for s in seqs], tpp, eng.device)]
    for _ in range(1, n_out):
        for s in seqs:
            s.num_computed = len(s.tokens)
            s.tokens.append(0)
        batches.append(build_batch([(s, 1) for s in seqs], tpp, eng.device))
    for s in seqs:
        eng.pool.free(s.pages)
    view = eng.pool.view(m.layout)

    def run() -> list[list[int]]:
        for s in seqs:  # the pages are lent back for the timed run only
            s.pages = eng.pool.allocate(len(s.pages)) or s.pages
        out = []
        nxt = None
        t0 = time.perf_counter()
        prefill_s = 0.0
        for b in batches:
            if nxt is not None:
                b.input_ids = nxt
            nxt = m.stage.forward(view, b).argmax(-1)
            out.append(nxt)
            if not prefill_s:
                prefill_s = time.perf_counter() - t0
        timer.record(prefill_s, time.perf_counter() - t0 - prefill_s)
        for s in seqs:
            eng.pool.free(s.pages)
        return torch.stack(out, dim=1).tolist()

    return run


def run_benchmark(w: Workload) -> BenchResult:
    from transformers import AutoModelForCausalLM, GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    from kvfleet.common.models import read_spec, resolve_model
    from kvfleet.services.worker.engine import Engine, EngineConfig, EngineRequest, SamplingParams
    from kvfleet.services.worker.engine.roofline import (
        batch_workload_bound,
        best_limits,
        measure_machine,
    )

    torch.set_flush_denormal(True)
    if w.num_threads:
        torch.set_num_threads(w.num_threads)
    source = resolve_model(w.model)
    spec = read_spec(source)
    prompts = w.prompts(spec.vocab_size)
    n_out = w.output_tokens
    total = w.num_requests * n_out
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[w.dtype]

    # ---- the machine's limits: measured once per round of the paths, the best round counts
    machine_runs = [measure_machine(dtypes=(w.dtype,))]

    def run_machine() -> list[list[int]]:
        machine_runs.append(measure_machine(dtypes=(w.dtype,)))
        return []

    # ---- (a) kvfleet
    ctx = w.prompt_tokens + n_out
    kv_bytes = spec.kv_bytes_per_token(spec.num_layers, 4)
    page = 1 << 20
    pool_bytes = (w.num_requests * (ctx + 64) * kv_bytes) + 64 * page
    weights = spec.param_count(0, spec.num_layers) * 4
    budget_tokens = max(2048, w.num_requests * w.prompt_tokens)
    eng = Engine(
        EngineConfig(
            memory_bytes=weights + pool_bytes + (512 << 20),
            page_size_bytes=page,
            max_num_batched_tokens=budget_tokens,
            max_num_seqs=max(64, w.num_requests),
            num_threads=w.num_threads,
            dtype=w.dtype,
            compile=w.compile,
        )
    )
    eng.load_model(w.model)
    counter = [0]
    kv_timer = SplitTimer()

    def run_kvfleet(ps: list[list[int]] = prompts, n: int = n_out) -> list[list[int]]:
        """The engine as a worker runs it; the first step (every prompt at once: the token
        budget holds them) is the prefill, the rest are decode steps of the whole batch."""
        counter[0] += 1
        out: dict[str, list[int]] = {}
        step_s: list[float] = []
        step_events: list[int] = []
        for i, p in enumerate(ps):
            eng.add_request(
                EngineRequest(
                    f"b{counter[0]}-{i}",
                    w.model,
                    tuple(p),
                    SamplingParams(max_tokens=n, ignore_eos=True),
                )
            )
        while eng.has_unfinished():
            t0 = time.perf_counter()
            events = eng.step()
            step_s.append(time.perf_counter() - t0)
            step_events.append(sum(ev.token_id is not None for ev in events))
            for ev in events:
                if ev.token_id is not None:
                    out.setdefault(ev.request_id, []).append(ev.token_id)
        if step_events != [len(ps)] * n:
            log.warning("steps were not one prefill then full decode steps: %s", step_events)
        kv_timer.record(step_s[0], sum(step_s[1:]))
        return [out[f"b{counter[0]}-{i}"] for i in range(len(ps))]

    # ---- the transformers model, same checkpoint, same dtype
    if source.kind == "gguf":
        hf = AutoModelForCausalLM.from_pretrained(
            str(source.path.parent), gguf_file=source.path.name, dtype=dtype
        )
    else:
        hf = AutoModelForCausalLM.from_pretrained(str(source.path), dtype=dtype)
    hf.eval()
    ids = torch.tensor(prompts)

    def run_generate(x: torch.Tensor = ids, n: int = n_out) -> list[list[int]]:
        with torch.inference_mode():
            out = hf.generate(
                x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
            )
        return out[:, x.shape[1] :].tolist()

    gen_cfg = GenerationConfig(
        max_new_tokens=n_out,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=spec.eos_token_ids[0] if spec.eos_token_ids else 0,
    )

    # generate_batch sizes its cache from free memory by default, which on CPU costs more than
    # the work; give it a cache sized to the workload and the same token budget as kvfleet.
    cb_page = 32
    cb_cfg = ContinuousBatchingConfig(
        page_size=cb_page,
        num_blocks=w.num_requests * (-(-ctx // cb_page) + 1) + 8,
        max_batch_tokens=budget_tokens,
    )

    def run_generate_batch(
        ps: list[list[int]] = prompts, cfg: ContinuousBatchingConfig | None = cb_cfg
    ) -> list[list[int]]:
        res = hf.generate_batch(
            inputs=ps,
            generation_config=gen_cfg,
            continuous_batching_config=cfg,
            progress_bar=False,
        )
        for r in res.values():
            if r.error:
                log.warning("generate_batch request %s failed: %s", r.request_id, r.error)
        outs = sorted(res.values(), key=lambda r: int(str(r.request_id).rsplit("_", 1)[-1]))
        return [list(r.generated_tokens) for r in outs]

    def run_roofline(x: torch.Tensor = ids, n: int = n_out) -> list[list[int]]:
        from transformers import DynamicCache

        with torch.inference_mode():
            cache = DynamicCache(config=hf.config)
            logits = hf(input_ids=x, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            toks = [nxt]
            for _ in range(n - 1):
                logits = hf(input_ids=nxt, past_key_values=cache, use_cache=True).logits
                nxt = logits[:, -1].argmax(-1, keepdim=True)
                toks.append(nxt)
        return torch.cat(toks, dim=1).tolist()

    # warm-up every path on a small batch
    small = [p[:16] for p in prompts[:2]]
    run_kvfleet(small, 4)
    run_generate(torch.tensor(small), 4)
    run_generate_batch(small)
    run_roofline(torch.tensor(small), 4)

    bare_timer = SplitTimer()
    run_bare = _bare_kvfleet(eng, w.model, prompts, n_out, bare_timer)
    run_bare()
    paths: dict[str, Callable[[], list[list[int]]]] = {
        "kvfleet": run_kvfleet,
        "hf_generate": run_generate,
        "hf_generate_batch": run_generate_batch,
        "roofline_hf_forward": run_roofline,
        "roofline_kvfleet_forward": run_bare,
    }
    if w.default_cache_path:
        paths["hf_generate_batch_default_cache"] = lambda: run_generate_batch(cfg=None)
    paths["machine"] = run_machine
    secs, outs = _best_interleaved(
        paths, w.repeats, {"kvfleet": kv_timer, "roofline_kvfleet_forward": bare_timer}
    )
    del paths["machine"]
    limits = best_limits(machine_runs)
    bound = batch_workload_bound(
        spec, dtype.itemsize, w.num_requests, w.prompt_tokens, n_out, limits, w.dtype
    )
    log.info(
        "machine: %s; bound %.2f s prefill, %.2f s decode", limits, bound.prefill_s, bound.decode_s
    )
    assert kv_timer.best is not None and bare_timer.best is not None
    secs["kvfleet_prefill"], secs["kvfleet_decode"] = kv_timer.best
    secs["bare_forward_prefill"], secs["bare_forward_decode"] = bare_timer.best
    secs["hw_roofline_prefill"], secs["hw_roofline_decode"] = bound.prefill_s, bound.decode_s
    kv_out, hf_out, cb_out = outs["kvfleet"], outs["hf_generate"], outs["hf_generate_batch"]
    secs["roofline"] = min(secs["roofline_hf_forward"], secs["roofline_kvfleet_forward"])
    lengths = {len(o) for o in kv_out} | {len(o) for o in hf_out}
    if lengths != {n_out}:
        log.warning("unexpected output lengths %s", lengths)
    cb_tokens = sum(len(o) for o in cb_out)
    tok_s = {k: total / secs[k] for k in (*paths, "roofline")}
    tok_s["hf_generate_batch"] = cb_tokens / secs["hf_generate_batch"]
    return BenchResult(
        kvfleet_tok_s=tok_s["kvfleet"],
        hf_generate_tok_s=tok_s["hf_generate"],
        hf_generate_batch_tok_s=tok_s["hf_generate_batch"],
        roofline_tok_s=tok_s["roofline"],
        roofline_hf_forward_tok_s=tok_s["roofline_hf_forward"],
        roofline_kvfleet_forward_tok_s=tok_s["roofline_kvfleet_forward"],
        hf_generate_batch_default_cache_tok_s=tok_s.get("hf_generate_batch_default_cache"),
        kvfleet_vs_hf_generate=tok_s["kvfleet"] / tok_s["hf_generate"],
        kvfleet_vs_hf_generate_batch=tok_s["kvfleet"] / tok_s["hf_generate_batch"],
        kvfleet_vs_roofline=tok_s["kvfleet"] / tok_s["roofline"],
        kvfleet_vs_hw_roofline=bound.total_s / secs["kvfleet"],
        kvfleet_vs_hw_roofline_decode=bound.decode_s / secs["kvfleet_decode"],
        kvfleet_vs_hw_roofline_prefill=bound.prefill_s / secs["kvfleet_prefill"],
        bare_forward_vs_hw_roofline_decode=bound.decode_s / secs["bare_forward_decode"],
        bare_forward_vs_hw_roofline_prefill=bound.prefill_s / secs["bare_forward_prefill"],
        hw_roofline={
            "machine": limits.to_dict(),
            "dtype": w.dtype,
            "prefill_flops": bound.prefill.flops,
            "prefill_bytes": bound.prefill.bytes,
            "decode_flops": bound.decode.flops,
            "decode_bytes": bound.decode.bytes,
            "prefill_s": bound.prefill_s,
            "decode_s": bound.decode_s,
        },
        seconds=secs,
        workload={
            **asdict(w),
            "threads": torch.get_num_threads(),
            "generate_batch_output_tokens": cb_tokens,
        },
        outputs_match_hf_generate=kv_out == hf_out,
        tokens_before_divergence=tokens_before_divergence(kv_out, hf_out),
    )
