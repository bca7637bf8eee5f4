"""Forming and dissolving a pipeline group, with the requests in flight keeping their progress.

Joining: every member holds the whole model and its own requests. The leader gathers what
each member holds and decides, per request, whether its KV for the layers that change hands
is sent (``kv_move``) or recomputed. Each member then sends every other stage the slice of
its requests' KV for that stage's layers (one sender at a time, so no two members wait on
each other), keeps its own slice, drops the other layers (the freed weights become pages,
each request re-laid out at the group's tokens per page) and imports what it received. The
leader owns every request from then on; the others hold shadows.

Dissolving: each member has read its missing layers into host memory beforehand
(``prefetch``, in the background while the group serves). The leader picks each request's
home (``assign_homes``: by the room each member will have) and whether its KV moves or is
recomputed; every member sends each home the slices it holds, installs the whole model
(giving the pool back the reloaded weights' memory) and rebuilds the requests homed there
from the slices, in layer order. Requests continue where they were; those recomputed
re-prefill. Nothing is emitted for a request that changes owner: the new owner continues its
token stream at the next index.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from kvfleet.common.models import read_weights
from kvfleet.services.worker.core.pipeline_policy import (
    RECOMPUTE,
    SEND,
    ExchangeCosts,
    assign_homes,
    kv_move,
)
from kvfleet.services.worker.engine.kv_pool import KvLayout
from kvfleet.services.worker.engine.loaded_model import LoadedModel
from kvfleet.services.worker.engine.migration import read_kv, write_kv
from kvfleet.services.worker.engine.model import ModelStage
from kvfleet.services.worker.engine.pipeline_group import GroupSpec, seq_from_meta, seq_meta
from kvfleet.services.worker.engine.sequence import Sequence
from kvfleet.services.worker.engine.stage_link import SendHandle, StageLink
from kvfleet.services.worker.engine.types import EngineInputError

log = logging.getLogger(__name__)


@dataclass
class RegroupResult:
    """What one member did, for its runner (ownership) and for the planner's report."""

    moved_in: list[tuple[str, str]] = field(default_factory=list)  # (request, its owner before)
    moved_out: list[tuple[str, str]] = field(default_factory=list)  # (request, new owner)
    num_sent: int = 0  # requests whose KV it sent
    num_recomputed: int = 0  # requests it will recompute, or whose KV it dropped
    bytes_sent: int = 0
    exchange_s: float = 0.0  # deciding and moving KV
    relayout_s: float = 0.0  # dropping/installing layers, rebuilding pages
    reload_s: float = 0.0  # reading the missing layers (dissolve; in the background)
    follower_pages: list[int] = field(default_factory=list)  # the leader: others' pools
    members: list[dict[str, Any]] = field(default_factory=list)  # the leader: others' results

    def stats(self) -> dict[str, Any]:
        return {"num_sent": self.num_sent, "num_recomputed": self.num_recomputed,
                "bytes_sent": self.bytes_sent, "exchange_s": self.exchange_s,
                "relayout_s": self.relayout_s, "reload_s": self.reload_s,
                "num_moved": len(self.moved_in) + len(self.moved_out)}


@dataclass
class Prefetched:
    """Layers read from the checkpoint into host memory, waiting to be installed."""

    model: str
    parts: list[tuple[int, int, dict[str, torch.Tensor]]]
    num_bytes: int
    reload_s: float


# ----------------------------------------------------------------- helpers
def _layout(m: LoadedModel, eng: Any, num_layers: int, tokens_per_page: int) -> KvLayout:
    widest = eng.pool.layout_for(num_layers, m.spec.num_kv_heads, m.spec.head_dim)
    if tokens_per_page > widest.tokens_per_page:
        raise EngineInputError(
            f"{tokens_per_page} tokens per page do not fit a page of {num_layers} layers "
            f"({widest.tokens_per_page} at most)")
    return KvLayout(num_layers, m.spec.num_kv_heads, m.spec.head_dim, tokens_per_page)


def _rebuild(eng: Any, m: LoadedModel, stage: ModelStage, layout: KvLayout,
             keep: dict[str, torch.Tensor]) -> None:
    """Give ``m`` a new stage and layout: every page of its sequences is freed, the pool is
    resized to what the budget leaves, and the sequences in ``keep`` get their KV back
    (``keep[rid]`` covers the new stage's layers); the others wait to be recomputed."""
    seqs = eng.sequences(m.name)
    for s in seqs:
        if s.pages:
            eng.pool.free(s.pages)
            s.pages = []
    m.stage = stage
    m.layout = layout
    eng.resize_pool()
    tpp = layout.tokens_per_page
    for s in seqs:
        kv = keep.get(s.seq_id)
        if kv is None or s.num_computed == 0:
            _to_waiting(eng, s)
            continue
        pages = eng.pool.allocate(-(-s.num_computed // tpp))
        if pages is None:  # the plan made room for it; recompute rather than fail
            log.warning("request %s: no room to rebuild its KV; recomputing", s.seq_id)
            _to_waiting(eng, s)
            continue
        s.pages = pages
        write_kv(eng.pool, m, pages, kv)


def _to_waiting(eng: Any, s: Sequence) -> None:
    if s.pages:
        eng.pool.free(s.pages)
        s.pages = []
    s.num_computed = 0
    if s in eng._running:
        eng._running.remove(s)
    if s not in eng._waiting:
        eng._waiting.append(s)


def _add(eng: Any, s: Sequence) -> None:
    eng._seqs[s.seq_id] = s
    eng._waiting.append(s)


def _remove(eng: Any, s: Sequence) -> None:
    if s.pages:
        eng.pool.free(s.pages)
        s.pages = []
    eng._seqs.pop(s.seq_id, None)
    if s in eng._running:
        eng._running.remove(s)
    if s in eng._waiting:
        eng._waiting.remove(s)


def _settle(eng: Any, seqs: list[Sequence]) -> None:
    """Sequences with pages run; the others wait, oldest first."""
    for s in seqs:
        if s.pages and s not in eng._running:
            if s in eng._waiting:
                eng._waiting.remove(s)
            eng._running.append(s)
    eng._running.sort(key=lambda s: (s.req.arrival_s, s.order))
    eng._waiting.sort(key=lambda s: (s.req.arrival_s, s.order))


def _exchange(link: StageLink, rank: int, outgoing: dict[int, tuple[dict[str, Any],
              list[torch.Tensor]]]) -> tuple[dict[int, tuple[dict[str, Any],
                                                              list[torch.Tensor]]], int]:
    """Every member sends ``outgoing[dst]`` to each other member, one sender at a time.
    Returns (what each other member sent here, bytes sent)."""
    received: dict[int, tuple[dict[str, Any], list[torch.Tensor]]] = {}
    sent = 0
    for sender in range(link.world_size):
        if sender == rank:
            handles: list[SendHandle] = []
            for dst in range(link.world_size):
                if dst == rank:
                    continue
                meta, tensors = outgoing.get(dst, ({}, []))
                handles.append(link.send(dst, meta, tensors))
                sent += sum(t.numel() * t.element_size() for t in tensors)
            for h in handles:
                h.wait()
        else:
            received[sender] = link.recv(sender)
    return received, sent


def merge_stages(parts: list[ModelStage]) -> ModelStage:
    """One stage over consecutive parts (sorted by first layer), sharing their tensors."""
    parts = sorted(parts, key=lambda p: p.first)
    if any(a.last != b.first for a, b in zip(parts, parts[1:], strict=False)):
        raise EngineInputError("stages to merge are not consecutive")
    head, tail = parts[0], parts[-1]
    new = copy.copy(head)
    new.first, new.last = head.first, tail.last
    new.layers = [layer for p in parts for layer in p.layers]
    new.embed = head.embed
    new.norm, new.lm_head = tail.norm, tail.lm_head
    spec = head.spec
    if spec.tie_word_embeddings and new.embed is not None and new.lm_head is not None:
        new.lm_head = new.embed  # one copy of a tied head once both ends are here
    return new


# ----------------------------------------------------------------- joining
def join_group(eng: Any, spec: GroupSpec, link: StageLink, costs: ExchangeCosts) -> RegroupResult:
    """This engine's part of forming ``spec``'s group (every member calls it at once).
    Call with the engine's step loop stopped."""
    res = RegroupResult()
    t0 = time.perf_counter()
    with eng._lock:
        m = eng.model(spec.model)
        spec.validate(m.spec.num_layers)
        if (m.stage.first, m.stage.last) != (0, m.spec.num_layers):
            raise EngineInputError(f"{spec.model!r}: a member must hold the whole model")
        if eng.models() != [spec.model]:
            raise EngineInputError("a pipeline stage holds one model; unload the others first")
        a, b = spec.layers
        layout = _layout(m, eng, b - a, spec.tokens_per_page)
        widest = max(hi - lo for lo, hi in spec.ranges)
        _layout(m, eng, widest, spec.tokens_per_page)
        eng.stage_spec = spec  # requests for the model: the leader queues them, others refuse
        eng._pending_events.extend(eng._drain_inbox())
        own = eng.sequences(spec.model)
        inventory = [[s.seq_id, s.num_computed] for s in own]
    kv_token_layer = 2 * m.spec.num_kv_heads * m.spec.head_dim * eng.pool.elem_bytes
    num_layers = m.spec.num_layers
    if spec.is_leader:
        inventories = {0: inventory}
        for k in range(1, spec.num_stages):
            inventories[k] = link.recv(k)[0]["inventory"]
        modes: dict[str, str] = {}
        for k, inv in inventories.items():
            kept = spec.ranges[k][1] - spec.ranges[k][0]
            for rid, n in inv:
                modes[rid] = kv_move(n, n * kv_token_layer * (num_layers - kept), costs)
        for k in range(1, spec.num_stages):
            link.send(k, {"modes": modes}).wait()
    else:
        link.send(0, {"inventory": inventory}).wait()
        modes = link.recv(0)[0]["modes"]

    with eng._lock:
        # each other stage's slice of this member's requests; its own slice stays here
        outgoing: dict[int, tuple[dict[str, Any], list[torch.Tensor]]] = {}
        keep: dict[str, torch.Tensor] = {}
        full: dict[str, torch.Tensor] = {}
        for s in own:
            if modes.get(s.seq_id) == SEND and s.num_computed > 0:
                full[s.seq_id] = read_kv(eng.pool, m, s.pages, 0, s.num_computed)
                keep[s.seq_id] = full[s.seq_id][a:b].clone()
                res.num_sent += 1
            elif s.num_computed > 0:
                res.num_recomputed += 1
        for k in range(spec.num_stages):
            if k == spec.rank:
                continue
            lo, hi = spec.ranges[k]
            metas, tensors = [], []
            for s in own:
                meta = seq_meta(s)
                if s.seq_id in full:
                    meta["kv"] = len(tensors)
                    tensors.append(full[s.seq_id][lo:hi].contiguous())
                else:
                    meta["num_computed"] = 0
                metas.append(meta)
            outgoing[k] = ({"seqs": metas}, tensors)
        del full
    received, res.bytes_sent = _exchange(link, spec.rank, outgoing)
    del outgoing
    res.exchange_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    with eng._lock:
        _rebuild(eng, m, m.stage.narrow(a, b), layout, keep)
        imported: list[tuple[Sequence, int]] = []
        for sender, (meta, tensors) in sorted(received.items()):
            for entry in meta.get("seqs", ()):
                seq = seq_from_meta(eng, entry, primary=spec.is_leader)
                _add(eng, seq)
                idx = entry.get("kv")
                n = int(entry["num_computed"])
                if idx is not None and n > 0:
                    pages = eng.pool.allocate(-(-n // spec.tokens_per_page))
                    if pages is not None:
                        seq.pages = pages
                        write_kv(eng.pool, m, pages, tensors[idx])
                        seq.num_computed = n
                imported.append((seq, sender))
        _settle(eng, eng.sequences(spec.model))
        with eng._inbox_lock:
            if spec.is_leader:
                for s, _ in imported:
                    eng._live.add(s.seq_id)
                res.moved_in = [(s.seq_id, spec.members[k]) for s, k in imported]
            else:
                for s in own:
                    eng._live.discard(s.seq_id)
                res.moved_out = [(s.seq_id, spec.members[0]) for s in own]
    res.relayout_s = time.perf_counter() - t1
    if spec.is_leader:
        res.follower_pages = [int(link.recv(k)[0]["pages"]) for k in range(1, spec.num_stages)]
    else:
        link.send(0, {"pages": eng.pool.num_pages}).wait()
    log.info("group %s: joined as stage %d holding layers [%d, %d): %d requests sent, %d "
             "recomputed, %d bytes in %.3fs, relayout %.3fs", spec.group_id, spec.rank, a, b,
             res.num_sent, res.num_recomputed, res.bytes_sent, res.exchange_s, res.relayout_s)
    return res


# ----------------------------------------------------------------- dissolving
def prefetch(eng: Any, model: str) -> Prefetched:
    """Read the layers this engine lacks of ``model`` into host memory (no engine lock: the
    group keeps serving meanwhile)."""
    t0 = time.perf_counter()
    m = eng.model(model)
    first, last = m.stage.first, m.stage.last
    ranges = [r for r in ((0, first), (last, m.spec.num_layers)) if r[0] < r[1]]
    parts = [(a, b, read_weights(m.source, a, b)) for a, b in ranges]
    nbytes = sum(t.numel() * t.element_size() for _, _, w in parts for t in w.values())
    return Prefetched(model, parts, nbytes, time.perf_counter() - t0)


def _install(eng: Any, m: LoadedModel, pre: Prefetched) -> ModelStage:
    built = [ModelStage(m.spec, dict(w), a, b, eng.dtype, eng.device) for a, b, w in pre.parts]
    return merge_stages([*built, m.stage])


def room_after_restore(eng: Any, m: LoadedModel) -> int:
    """Pages the pool will have once the whole model is held again."""
    from kvfleet.services.worker.engine.loaded_model import weights_bytes

    extra = weights_bytes(m.spec, 0, m.spec.num_layers, eng.dtype) - m.stage.num_bytes()
    return int(eng.pool_pages(max(extra, 0)))


def dissolve_group(eng: Any, spec: GroupSpec, link: StageLink, costs: ExchangeCosts,
                   pre: Prefetched) -> RegroupResult:
    """This engine's part of dissolving ``spec``'s group, after the leader's dissolve header
    (every member calls it at once, its stage loop stopped)."""
    res = RegroupResult(reload_s=pre.reload_s)
    t0 = time.perf_counter()
    m = eng.model(spec.model)
    num_layers = m.spec.num_layers
    tpp_full = eng.pool.layout_for(num_layers, m.spec.num_kv_heads, m.spec.head_dim)
    with eng._lock:
        room = room_after_restore(eng, m)
    if spec.is_leader:
        rooms = {spec.members[0]: room}
        for k in range(1, spec.num_stages):
            rooms[spec.members[k]] = int(link.recv(k)[0]["room"])
        with eng._lock:
            pages = {s.seq_id: -(-s.num_computed // tpp_full.tokens_per_page)
                     for s in eng.sequences(spec.model)}
        homes, overflow = assign_homes(pages, rooms)
        kv_token_layer = 2 * m.spec.num_kv_heads * m.spec.head_dim * eng.pool.elem_bytes
        modes: dict[str, str] = {}
        for s in eng.sequences(spec.model):
            if s.seq_id in overflow:
                modes[s.seq_id] = RECOMPUTE
                continue
            home = spec.members.index(homes[s.seq_id])
            held = spec.ranges[home][1] - spec.ranges[home][0]
            n = s.num_computed
            modes[s.seq_id] = kv_move(n, n * kv_token_layer * (num_layers - held), costs)
        plan = {"homes": homes, "modes": modes}
        for k in range(1, spec.num_stages):
            link.send(k, plan).wait()
    else:
        link.send(0, {"room": room}).wait()
        plan = link.recv(0)[0]
    homes, modes = plan["homes"], plan["modes"]
    me = spec.members[spec.rank]

    with eng._lock:
        seqs = {s.seq_id: s for s in eng.sequences(spec.model)}
        mine: dict[str, torch.Tensor] = {}
        outgoing: dict[int, tuple[dict[str, Any], list[torch.Tensor]]] = {}
        for k, member in enumerate(spec.members):
            metas: list[dict[str, Any]] = []
            tensors: list[torch.Tensor] = []
            for rid, s in seqs.items():
                if homes.get(rid) != member:
                    continue
                send_kv = modes.get(rid) == SEND and s.num_computed > 0 and s.pages
                if k == spec.rank:
                    if send_kv:
                        mine[rid] = read_kv(eng.pool, m, s.pages, 0, s.num_computed)
                    continue
                meta = seq_meta(s) if spec.is_leader else {
                    "request_id": rid, "num_computed": s.num_computed}
                if send_kv:
                    meta["kv"] = len(tensors)
                    tensors.append(read_kv(eng.pool, m, s.pages, 0, s.num_computed))
                    res.num_sent += 1
                metas.append(meta)
            if k != spec.rank:
                outgoing[k] = ({"seqs": metas}, tensors)
    received, res.bytes_sent = _exchange(link, spec.rank, outgoing)
    del outgoing
    res.exchange_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    with eng._lock:
        pieces: dict[str, dict[int, torch.Tensor]] = {rid: {spec.rank: kv}
                                                     for rid, kv in mine.items()}
        metas: dict[str, dict[int, dict[str, Any]]] = {}
        for sender, (meta, tensors) in received.items():
            for entry in meta.get("seqs", ()):
                rid = entry["request_id"]
                metas.setdefault(rid, {})[sender] = entry
                if entry.get("kv") is not None:
                    pieces.setdefault(rid, {})[sender] = tensors[entry["kv"]]
        keep: dict[str, torch.Tensor] = {}
        for rid, s in list(seqs.items()):
            if homes.get(rid) != me:
                _remove(eng, s)
                with eng._inbox_lock:
                    eng._live.discard(rid)
                if spec.is_leader:
                    res.moved_out.append((rid, homes[rid]))
                continue
            got = pieces.get(rid, {})
            if modes.get(rid) == SEND and s.num_computed > 0 and len(got) == spec.num_stages:
                keep[rid] = torch.cat([got[k].to(eng.device) for k in range(spec.num_stages)],
                                      dim=0)
            else:
                res.num_recomputed += int(s.num_computed > 0)
            if not spec.is_leader:  # the shadow becomes the request: the leader's state
                primary = seq_from_meta(eng, metas[rid][0], primary=True)
                primary.num_computed = s.num_computed
                _remove(eng, s)
                _add(eng, primary)
                seqs[rid] = primary
                res.moved_in.append((rid, spec.members[0]))
        del pieces
        # Give the pool's pages back first, then install the reloaded weights: the weights
        # and the pool never exceed the budget together.
        for s in eng.sequences(spec.model):
            if s.pages:
                eng.pool.free(s.pages)
                s.pages = []
        eng.resize_pool(room)
        stage = _install(eng, m, pre)
        layout = eng.pool.layout_for(num_layers, m.spec.num_kv_heads, m.spec.head_dim)
        eng.stage_spec = None
        eng.pipeline = None
        _rebuild(eng, m, stage, layout, keep)
        if m.tokenizer is None:
            from kvfleet.common.models.tokenizer import load_tokenizer

            m.tokenizer = load_tokenizer(spec.model)
        _settle(eng, eng.sequences(spec.model))
        with eng._inbox_lock:
            for rid, _ in res.moved_in:
                eng._live.add(rid)
    res.relayout_s = time.perf_counter() - t1
    if spec.is_leader:
        res.members = [link.recv(k)[0] for k in range(1, spec.num_stages)]
    else:
        link.send(0, res.stats()).wait()
    log.info("group %s: dissolved (stage %d): %d requests sent, %d recomputed, %d bytes in "
             "%.3fs, relayout %.3fs, reload %.3fs", spec.group_id, spec.rank, res.num_sent,
             res.num_recomputed, res.bytes_sent, res.exchange_s, res.relayout_s, res.reload_s)
    return res


def abandon_group(eng: Any, model: str) -> None:
    """Leave a broken group alone: shadows go, the model's layers are reloaded from the
    checkpoint, and the requests this engine owns are recomputed here."""
    from kvfleet.services.worker.engine.layers import restore_layers

    with eng._lock:
        with eng._inbox_lock:
            live = set(eng._live)
        for s in eng.sequences(model):
            if s.seq_id not in live:
                _remove(eng, s)
        eng.stage_spec = None
        eng.pipeline = None
        restore_layers(eng, model, None)
        log.warning("%s: left its pipeline group; layers reloaded, requests recomputed", model)
