"""KunServe's drop plan: which replicas of a model form a pipeline group, and which layers
each keeps. Pure.

Every replica holds the whole model. A group of ``g`` replicas keeps one copy of the model
split into ``g`` contiguous layer ranges (stage 0 first); each member frees the weights of the
layers it drops into KV pages. A request then takes the same number of pages on every stage
(one tokens-per-page for the group, from the stage holding the most layers), so the group
holds ``min over stages of its pages x tokens per page`` tokens, against the sum of the
members' tokens before. The difference is the group's *gain*.

``plan_group`` picks, among the candidate replicas, the group that

1. covers the deficit (gain >= deficit), the smallest such group; when none covers it, the
   group with the largest gain;
2. then the one on the fastest links (every member on one node);
3. then the largest gain; then the smallest worker ids.

Stages are balanced by compute (layers, plus the LM head's cost on the last stage), and each
member takes the stage where its pool gains the least when it has the most pages (pairing
the largest pools with the smallest freed memory maximises the tightest stage).
Candidates with the same node, pool and page size are interchangeable, so the search runs
over how many to take of each such class rather than over subsets.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from kvfleet.services.scheduler.core.stages import ModelShapeView

MAX_CLASSES = 24
"""Most candidate classes searched exhaustively (the fullest ones are kept)."""


@dataclass(frozen=True, slots=True)
class DropCandidate:
    """A replica that could join a group: it holds the whole model and no group."""

    worker_id: str
    node: str
    num_total_pages: int  # its pool, with the whole model held
    page_size_bytes: int


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """A pipeline group: ``members[k]`` keeps ``ranges[k]``; ``members[0]`` leads."""

    members: tuple[str, ...]
    ranges: tuple[tuple[int, int], ...]
    tokens_per_page: int
    gain_tokens: int
    single_node: bool


def balanced_ranges(
    num_layers: int, num_stages: int, head_cost_layers: float = 0.0
) -> tuple[tuple[int, int], ...]:
    """Contiguous ranges of ``num_layers`` layers over ``num_stages`` stages minimising the
    largest stage cost (layers, plus ``head_cost_layers`` on the last stage); among equally
    balanced splits, the earlier stages take the extra layers."""
    if not 1 <= num_stages <= num_layers:
        raise ValueError(f"cannot split {num_layers} layers into {num_stages} stages")
    best: tuple[float, tuple[int, ...]] | None = None
    # Stage sizes s_1..s_g, sum L: the cheapest largest cost, then the lexicographically
    # largest sizes. A DP over (stages left, layers left) keeps it O(g L^2).
    memo: dict[tuple[int, int], tuple[float, tuple[int, ...]]] = {}

    def solve(stages: int, layers: int) -> tuple[float, tuple[int, ...]]:
        key = (stages, layers)
        if key in memo:
            return memo[key]
        out: tuple[float, tuple[int, ...]]
        if stages == 1:
            out = (float(layers + head_cost_layers), (layers,))
        else:
            cand: tuple[float, tuple[int, ...]] | None = None
            for first in range(layers - stages + 1, 0, -1):
                rest_cost, rest = solve(stages - 1, layers - first)
                value = (max(float(first), rest_cost), (first, *rest))
                if cand is None or value[0] < cand[0]:
                    cand = value
            assert cand is not None
            out = cand
        memo[key] = out
        return out

    best = solve(num_stages, num_layers)
    ranges = []
    start = 0
    for size in best[1]:
        ranges.append((start, start + size))
        start += size
    return tuple(ranges)


def stage_cost(ranges: Sequence[tuple[int, int]], num_layers: int, head_cost: float) -> float:
    """The largest stage's compute, in layers (the pipeline's slowest stage)."""
    return max((b - a) + (head_cost if b == num_layers else 0.0) for a, b in ranges)


def freed_pages(shape: ModelShapeView, rng: tuple[int, int], page_size_bytes: int) -> int:
    """Pages a replica gains by keeping only ``rng`` of the model."""
    return (shape.full_bytes - shape.weight_bytes(*rng)) // page_size_bytes


def group_gain(
    shape: ModelShapeView, members: Sequence[DropCandidate], ranges: Sequence[tuple[int, int]]
) -> tuple[int, int]:
    """(gain in tokens, the group's tokens per page) of ``members[k]`` keeping ``ranges[k]``."""
    page = members[0].page_size_bytes
    tpp_full = shape.tokens_per_page(page, shape.num_layers)
    tpp = shape.tokens_per_page(page, max(b - a for a, b in ranges))
    after = min(m.num_total_pages + freed_pages(shape, r, page)
                for m, r in zip(members, ranges, strict=True))
    before = sum(m.num_total_pages for m in members)
    return after * tpp - before * tpp_full, tpp


def assign_stages(
    shape: ModelShapeView, members: Sequence[DropCandidate], ranges: Sequence[tuple[int, int]]
) -> tuple[DropCandidate, ...]:
    """Members in stage order: the largest pools take the stages that free the least."""
    page = members[0].page_size_bytes
    stages = sorted(range(len(ranges)), key=lambda k: (freed_pages(shape, ranges[k], page), k))
    pool_desc = sorted(members, key=lambda m: (-m.num_total_pages, m.node, m.worker_id))
    order: list[DropCandidate | None] = [None] * len(ranges)
    for k, m in zip(stages, pool_desc, strict=True):
        order[k] = m
    # members with equal pools are interchangeable: keep them in node, id order by stage
    by_pool: dict[int, list[int]] = {}
    for k, held in enumerate(order):
        assert held is not None
        by_pool.setdefault(held.num_total_pages, []).append(k)
    for ks in by_pool.values():
        same = sorted((order[k] for k in ks), key=lambda m: (m.node, m.worker_id))  # type: ignore[union-attr]
        for k, held in zip(ks, same, strict=True):
            order[k] = held
    return tuple(m for m in order if m is not None)


def _key(plan: GroupPlan, deficit: int) -> tuple:  # type: ignore[type-arg]
    covers = plan.gain_tokens >= deficit
    size = len(plan.members)
    return (
        not covers,  # covering groups first
        size if covers else -plan.gain_tokens,  # the smallest covering, else the largest gain
        not plan.single_node,  # then the fastest links
        -plan.gain_tokens,
        tuple(sorted(plan.members)),
    )


def plan_key(plan: GroupPlan, deficit: int) -> tuple:  # type: ignore[type-arg]
    """The order ``plan_group`` ranks groups by (lower is better), without the id tie-break."""
    return _key(plan, deficit)[:-1]


def make_group(
    shape: ModelShapeView, members: Sequence[DropCandidate], head_cost_layers: float = 0.0
) -> GroupPlan:
    ranges = balanced_ranges(shape.num_layers, len(members), head_cost_layers)
    ordered = assign_stages(shape, members, ranges)
    gain, tpp = group_gain(shape, ordered, ranges)
    return GroupPlan(
        tuple(m.worker_id for m in ordered), ranges, tpp, gain,
        len({m.node for m in members}) == 1,
    )


def _multisets(sizes: Sequence[int], total: int) -> Iterator[tuple[int, ...]]:
    """Counts per class (each at most its size) summing to ``total``."""
    if not sizes:
        if total == 0:
            yield ()
        return
    for k in range(min(sizes[0], total), -1, -1):
        for rest in _multisets(sizes[1:], total - k):
            yield (k, *rest)


def plan_group(
    shape: ModelShapeView,
    candidates: Sequence[DropCandidate],
    deficit_tokens: int,
    max_group_size: int = 4,
    head_cost_layers: float = 0.0,
) -> GroupPlan | None:
    """The best group among ``candidates`` (see the module doc), or None when no group of
    two or more with a positive gain exists."""
    classes: dict[tuple[str, int, int], list[DropCandidate]] = {}
    for c in sorted(candidates, key=lambda c: c.worker_id):
        classes.setdefault((c.node, c.num_total_pages, c.page_size_bytes), []).append(c)
    keys = sorted(classes, key=lambda k: (-len(classes[k]), k))[:MAX_CLASSES]
    best: GroupPlan | None = None
    best_key: tuple | None = None  # type: ignore[type-arg]
    limit = min(max_group_size, shape.num_layers, sum(len(classes[k]) for k in keys))
    for page in sorted({k[2] for k in keys}):
        same_page = [k for k in keys if k[2] == page]
        sizes = [len(classes[k]) for k in same_page]
        for g in range(2, limit + 1):
            for counts in _multisets(sizes, g):
                members = [c for k, n in zip(same_page, counts, strict=True)
                           for c in classes[k][:n]]
                plan = make_group(shape, members, head_cost_layers)
                if plan.gain_tokens <= 0:
                    continue
                key = _key(plan, deficit_tokens)
                if best_key is None or key < best_key:
                    best, best_key = plan, key
    return best


def plan_drops(
    shape: ModelShapeView,
    candidates: Sequence[DropCandidate],
    deficit_tokens: int,
    max_group_size: int = 4,
    head_cost_layers: float = 0.0,
) -> tuple[GroupPlan, ...]:
    """Groups covering ``deficit_tokens``, best first, until it is covered or no candidate
    group gains anything."""
    left = list(candidates)
    plans: list[GroupPlan] = []
    deficit = deficit_tokens
    while deficit > 0 and len(left) >= 2:
        plan = plan_group(shape, left, deficit, max_group_size, head_cost_layers)
        if plan is None:
            break
        plans.append(plan)
        deficit -= plan.gain_tokens
        used = set(plan.members)
        left = [c for c in left if c.worker_id not in used]
    return tuple(plans)
