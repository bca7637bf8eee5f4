"""What a worker holds of each model: layer ranges, model shapes and pipeline groups. Pure.

A worker may hold only a range of a model's layers, as a stage of a pipeline group (KunServe:
replicas drop complementary layers and serve together). The group's first stage (its
leader) takes the group's requests; the other stages only run their layers for it. These
types travel in worker heartbeats and reach the scheduler (which must never send a request
to a worker that cannot serve it alone), the planner and the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ModelShapeView:
    """The bytes a model's parts take on a worker, and its KV bytes per token and layer."""

    num_layers: int
    layer_bytes: int  # weights of one decoder layer
    first_bytes: int  # held with layer 0 (the embedding)
    last_bytes: int  # held with the last layer (final norm, LM head)
    kv_bytes_per_token_layer: int
    shared_bytes: int = 0  # saved when one stage holds both ends (a head tied to the embedding)

    def weight_bytes(self, first: int, last: int) -> int:
        """Weights of a stage holding layers [first, last)."""
        n = (last - first) * self.layer_bytes
        if first == 0:
            n += self.first_bytes
        if last == self.num_layers:
            n += self.last_bytes
            if first == 0:
                n -= self.shared_bytes
        return n

    @property
    def full_bytes(self) -> int:
        return self.weight_bytes(0, self.num_layers)

    def tokens_per_page(self, page_size_bytes: int, num_layers: int) -> int:
        """Tokens of a stage holding ``num_layers`` layers that fit in one page."""
        return page_size_bytes // max(1, self.kv_bytes_per_token_layer * num_layers)

    def to_list(self) -> list[int]:
        return [self.num_layers, self.layer_bytes, self.first_bytes, self.last_bytes,
                self.kv_bytes_per_token_layer, self.shared_bytes]


@dataclass(frozen=True, slots=True)
class StageView:
    """A worker's place in a pipeline group serving one model."""

    group_id: str
    rank: int
    members: tuple[str, ...]  # worker ids in stage order; members[0] leads
    ranges: tuple[tuple[int, int], ...]  # layer range of each member, in the same order

    @property
    def leader_id(self) -> str:
        return self.members[0]

    @property
    def num_stages(self) -> int:
        return len(self.members)


def serving_models(
    models: tuple[str, ...],
    layers: dict[str, tuple[int, int]],
    shapes: dict[str, ModelShapeView],
    groups: dict[str, StageView],
) -> tuple[str, ...]:
    """The models a worker takes requests for: those it holds whole, and those whose pipeline
    group it leads. A worker holding only part of a model otherwise serves none of it."""
    out = []
    for m in models:
        group = groups.get(m)
        if group is not None:
            if group.rank == 0:
                out.append(m)
            continue
        rng, shape = layers.get(m), shapes.get(m)
        if rng is None or shape is None or rng == (0, shape.num_layers):
            out.append(m)
    return tuple(out)
