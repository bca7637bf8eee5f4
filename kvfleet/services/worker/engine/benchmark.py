"""One workload through four paths, in one process: the kvfleet engine, transformers
``generate`` (static batch), transformers ``generate_batch`` (continuous batching) and the
roofline (the bare forward passes of the same batches through the model, no engine).

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
    seconds: dict[str, float]
    workload: dict[str, object]
    outputs_match_hf_generate: bool

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _best_interleaved(
    paths: dict[str, Callable[[], list[list[int]]]], repeats: int
) -> tuple[dict[str, float], dict[str, list[list[int]]]]:
    """Best time per path; repeats go round-robin over the paths so that a noisy moment on
    a shared machine does not land on one path only."""
    best = {k: float("inf") for k in paths}
    outs: dict[str, list[list[int]]] = {}
    for _ in range(repeats):
        for name, fn in paths.items():
            t0 = time.perf_counter()
            outs[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
            log.info("%s: %.2f s", name, time.perf_counter() - t0)
    return best, outs


def _bare_kvfleet(
    eng, model: str, prompts: list[list[int]], n_out: int
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
        for b in batches:
            if nxt is not None:
                b.input_ids = nxt
            nxt = m.stage.forward(view, b).argmax(-1)
            out.append(nxt)
        for s in seqs:
            eng.pool.free(s.pages)
        return torch.stack(out, dim=1).tolist()

    return run


def run_benchmark(w: Workload) -> BenchResult:
    from transformers import AutoModelForCausalLM, GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    from kvfleet.common.models import read_spec, resolve_model
    from kvfleet.services.worker.engine import Engine, EngineConfig, EngineRequest, SamplingParams

    torch.set_flush_denormal(True)
    if w.num_threads:
        torch.set_num_threads(w.num_threads)
    source = resolve_model(w.model)
    spec = read_spec(source)
    prompts = w.prompts(spec.vocab_size)
    n_out = w.output_tokens
    total = w.num_requests * n_out

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
        )
    )
    eng.load_model(w.model)
    counter = [0]

    def run_kvfleet(ps: list[list[int]] = prompts, n: int = n_out) -> list[list[int]]:
        counter[0] += 1
        out: dict[str, list[int]] = {}
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
            for ev in eng.step():
                if ev.token_id is not None:
                    out.setdefault(ev.request_id, []).append(ev.token_id)
        return [out[f"b{counter[0]}-{i}"] for i in range(len(ps))]

    # ---- the transformers model, same checkpoint, float32
    if source.kind == "gguf":
        hf = AutoModelForCausalLM.from_pretrained(
            str(source.path.parent), gguf_file=source.path.name, dtype=torch.float32
        )
    else:
        hf = AutoModelForCausalLM.from_pretrained(str(source.path), dtype=torch.float32)
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

    run_bare = _bare_kvfleet(eng, w.model, prompts, n_out)
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
    secs, outs = _best_interleaved(paths, w.repeats)
    kv_out, hf_out, cb_out = outs["kvfleet"], outs["hf_generate"], outs["hf_generate_batch"]
    secs["roofline"] = min(secs["roofline_hf_forward"], secs["roofline_kvfleet_forward"])
    lengths = {len(o) for o in kv_out} | {len(o) for o in hf_out}
    if lengths != {n_out}:
        log.warning("unexpected output lengths %s", lengths)
    cb_tokens = sum(len(o) for o in cb_out)
    tok_s = {k: total / v for k, v in secs.items()}
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
        seconds=secs,
        workload={
            **asdict(w),
            "threads": torch.get_num_threads(),
            "generate_batch_output_tokens": cb_tokens,
        },
        outputs_match_hf_generate=kv_out == hf_out,
    )
