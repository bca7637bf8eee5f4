"""Every Redis key and value layout kvfleet uses, in one place.

Values are JSON or plain strings, never pickle. Each record carries the schema version
``v``; a reader refuses a record from another version rather than guess. Keys share the
prefix ``kvfleet:v<SCHEMA_VERSION>:`` so two schema versions never collide.

| key | type | holds |
| --- | --- | --- |
| ``queue:{model}`` | stream, group ``schedulers`` | one entry per request to place: ``{v, rid}`` |
| ``queue-models`` | set | models that have a queue stream |
| ``queued:{model}`` | sorted set | requests waiting for a worker (admission counts them), by arrival |
| ``queued-tokens:{model}`` | string | their prompt tokens, summed |
| ``request:{rid}`` | hash | :class:`RequestRecord` fields |
| ``tokens:{rid}`` | stream | :class:`TokenEntry` per output token, the last one with ``f`` |
| ``active`` | sorted set | unfinished request ids, scored by arrival time |
| ``workers`` | hash | worker id -> :class:`WorkerInfo` JSON (registry; survives death) |
| ``worker:{id}:hb`` | string with TTL | :class:`Occupancy` JSON (incl. layer ranges and pipeline groups); absent = dead |
| ``worker:{id}:requests`` | set | request ids assigned to the worker and not finished |
| ``draining`` | set | worker ids the scheduler must not dispatch to |
| ``schedulers`` | sorted set | scheduler consumer names scored by their last tick (liveness) |
| ``plan`` | string | :class:`PlanRecord` JSON |
| ``models`` | hash | model name -> :class:`ModelInfo` JSON (per-model defaults, from the planner) |
| ``predictor:{model}`` | hash | output-length counts ``"{prompt bucket}:{length bin}" -> n`` |
| ``predictor:{model}:warm`` | string | set once a trace warm-started the model's counts |
| ``load:{model}`` | hash | requests accepted per time bucket: ``"{bucket}:n"``, ``"{bucket}:in"`` (prompt tokens), ``"{bucket}:out"`` (predicted output tokens); buckets of ``LOAD_BUCKET_S`` |
| ``events`` | stream (capped) | :class:`Event` per assignment, migration, failure, plan |
| ``fleet-activity`` | stream (capped) | :class:`FleetSample`: the active and idle workers, over time |
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from kvfleet.common.sampling import SamplingParams
from kvfleet.common.slo import ServiceLevel
from kvfleet.services.scheduler.core.admission import (
    DEFAULT_MAX_QUEUED_REQUESTS,
    DEFAULT_MAX_QUEUED_TOKENS,
)
from kvfleet.services.scheduler.core.occupancy import OccupancyReport, SeqReport
from kvfleet.services.scheduler.core.stages import ModelShapeView, StageView

SCHEMA_VERSION = 1
PREFIX = f"kvfleet:v{SCHEMA_VERSION}:"
QUEUE_GROUP = "schedulers"
EVENTS_MAXLEN = 10_000
# Why trimming at QUEUE_MAXLEN never drops an accepted request: an entry leaves its stream
# (XACK + XDEL) once its request is assigned or ended, so a stream holds only requests waiting
# for a worker. Each of those is in the model's ``queued`` set: new ones through admission
# (at most max_queued_requests <= MAX_QUEUED_REQUESTS_LIMIT of them), requeued ones (their
# worker died or refused them) at most as many as the workers were running. A stream is
# therefore far shorter than this, and XADD's approximate trim (which removes whole
# macro-nodes of the oldest entries only when the stream is longer than MAXLEN) never
# reaches one of them (tests/unit/common/test_redis_schema.py checks the margin).
QUEUE_MAXLEN = 1_000_000
FINISHED_TTL_S = 3600  # request hash and token stream linger this long after finishing


class SchemaError(ValueError):
    """A Redis value does not match this schema version."""


# keys ------------------------------------------------------------------------------------


def queue_key(model: str) -> str:
    return f"{PREFIX}queue:{model}"


def queued_key(model: str) -> str:
    return f"{PREFIX}queued:{model}"


def queued_tokens_key(model: str) -> str:
    return f"{PREFIX}queued-tokens:{model}"


QUEUE_MODELS_KEY = f"{PREFIX}queue-models"
ACTIVE_KEY = f"{PREFIX}active"
WORKERS_KEY = f"{PREFIX}workers"
DRAINING_KEY = f"{PREFIX}draining"
SCHEDULERS_KEY = f"{PREFIX}schedulers"
SCHEDULER_TTL_S = 5.0  # a scheduler that has not ticked this long is not live
PLAN_KEY = f"{PREFIX}plan"
MODELS_KEY = f"{PREFIX}models"
EVENTS_KEY = f"{PREFIX}events"
FLEET_ACTIVITY_KEY = f"{PREFIX}fleet-activity"
FLEET_ACTIVITY_MAXLEN = 100_000


def request_key(request_id: str) -> str:
    return f"{PREFIX}request:{request_id}"


def tokens_key(request_id: str) -> str:
    return f"{PREFIX}tokens:{request_id}"


def predictor_key(model: str) -> str:
    return f"{PREFIX}predictor:{model}"


def predictor_warm_key(model: str) -> str:
    return f"{PREFIX}predictor:{model}:warm"


def predictor_field(bucket: int, bin_: int) -> str:
    return f"{bucket}:{bin_}"


def parse_predictor_field(name: str) -> tuple[int, int]:
    bucket, _, bin_ = name.partition(":")
    return int(bucket), int(bin_)


def load_key(model: str) -> str:
    return f"{PREFIX}load:{model}"


LOAD_BUCKET_S = 5  # width of a load bucket (seconds of wall clock)
LOAD_TTL_S = 3600  # a model's load hash lives this long after its last request
# buckets a load hash keeps (the longest window it can answer is LOAD_TTL_S): the writer prunes
# older ones once the hash holds more fields than these, so it stays bounded under any traffic
LOAD_MAX_BUCKETS = LOAD_TTL_S // LOAD_BUCKET_S


def load_fields(bucket: int, prompt_tokens: int, output_tokens: int) -> dict[str, int]:
    """The increments one accepted request adds to its model's load hash."""
    return {f"{bucket}:n": 1, f"{bucket}:in": prompt_tokens, f"{bucket}:out": output_tokens}


#: the most fields a load hash holds before its writer prunes it
LOAD_MAX_FIELDS = (LOAD_MAX_BUCKETS + 1) * len(load_fields(0, 0, 0))


def parse_load(fields: dict[Any, Any], first_bucket: int) -> tuple[int, int, int, list[str]]:
    """(requests, prompt tokens, output tokens) summed over buckets >= ``first_bucket``, and
    the fields of older buckets (to delete)."""
    n = tin = tout = 0
    old: list[str] = []
    for k, v in fields.items():
        name = _s(k)
        bucket, _, kind = name.partition(":")
        try:
            b = int(bucket)
        except ValueError:
            old.append(name)
            continue
        if b < first_bucket:
            old.append(name)
            continue
        value = int(_s(v))
        if kind == "n":
            n += value
        elif kind == "in":
            tin += value
        elif kind == "out":
            tout += value
    return n, tin, tout, old


def heartbeat_key(worker_id: str) -> str:
    return f"{PREFIX}worker:{worker_id}:hb"


def worker_requests_key(worker_id: str) -> str:
    return f"{PREFIX}worker:{worker_id}:requests"


# values ----------------------------------------------------------------------------------


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _check_version(v: Any) -> None:
    if str(v) != str(SCHEMA_VERSION):
        raise SchemaError(f"schema version {v!r}, expected {SCHEMA_VERSION}")


def _loads(raw: bytes | str) -> dict[str, Any]:
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise SchemaError("expected a JSON object")
    _check_version(data.get("v"))
    return data


def queue_entry(request_id: str) -> dict[str, str]:
    return {"v": str(SCHEMA_VERSION), "rid": request_id}


def parse_queue_entry(fields: dict[Any, Any]) -> str:
    f = {_s(k): _s(v) for k, v in fields.items()}
    _check_version(f.get("v"))
    return f["rid"]


# request states
QUEUED = "queued"
ASSIGNED = "assigned"
FINISHED = "finished"


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """The request hash: what any scheduler or worker needs to (re)start the request."""

    request_id: str
    model: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams
    arrival_s: float
    state: str = QUEUED
    worker_id: str = ""
    cancelled: bool = False
    finish_reason: str = ""
    num_resumes: int = 0
    slo: ServiceLevel = ServiceLevel()
    predicted_output_tokens: int | None = None
    owner: str = ""  # id of the API key that sent it; only that key may cancel it
    lease: int = 0  # bumped by every (re)assignment: writes under an older lease are refused
    deadline_s: float | None = None  # wall clock; the scheduler drops it unassigned after

    def to_fields(self) -> dict[str, str]:
        return {
            "v": str(SCHEMA_VERSION),
            "model": self.model,
            "prompt": json.dumps(list(self.prompt_token_ids)),
            "sampling": self.sampling.to_json(),
            "arrival_s": repr(self.arrival_s),
            "state": self.state,
            "worker": self.worker_id,
            "cancelled": "1" if self.cancelled else "0",
            "finish_reason": self.finish_reason,
            "resumes": str(self.num_resumes),
            "slo": json.dumps(self.slo.to_dict()),
            "pred": "" if self.predicted_output_tokens is None else str(self.predicted_output_tokens),
            "owner": self.owner,
            "lease": str(self.lease),
            "deadline": "" if self.deadline_s is None else repr(self.deadline_s),
        }

    @classmethod
    def from_fields(cls, request_id: str, fields: dict[Any, Any]) -> RequestRecord:
        f = {_s(k): _s(v) for k, v in fields.items()}
        if not f:
            raise KeyError(request_id)
        _check_version(f.get("v"))
        return cls(
            request_id=request_id,
            model=f["model"],
            prompt_token_ids=tuple(json.loads(f["prompt"])),
            sampling=SamplingParams.from_json(f["sampling"]),
            arrival_s=float(f["arrival_s"]),
            state=f.get("state", QUEUED),
            worker_id=f.get("worker", ""),
            cancelled=f.get("cancelled") == "1",
            finish_reason=f.get("finish_reason", ""),
            num_resumes=int(f.get("resumes", "0")),
            slo=ServiceLevel.from_dict(json.loads(f["slo"])) if f.get("slo") else ServiceLevel(),
            predicted_output_tokens=int(f["pred"]) if f.get("pred") else None,
            owner=f.get("owner", ""),
            lease=int(f.get("lease") or 0),
            deadline_s=float(f["deadline"]) if f.get("deadline") else None,
        )


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One output token (or a bare finish) in a request's token stream, by output index.

    Readers keep the next index they expect and drop entries below it, so a token written
    twice (a resume that re-generates it, a migration) reaches the client once.
    """

    index: int
    token_id: int | None
    text: str
    finish_reason: str | None = None
    worker_id: str = ""
    ts: float = 0.0  # when the worker produced it (wall clock, as every timestamp here)

    def to_fields(self) -> dict[str, str]:
        out = {"i": str(self.index), "x": self.text, "w": self.worker_id, "s": repr(self.ts)}
        if self.token_id is not None:
            out["t"] = str(self.token_id)
        if self.finish_reason:
            out["f"] = self.finish_reason
        return out

    @classmethod
    def from_fields(cls, fields: dict[Any, Any]) -> TokenEntry:
        f = {_s(k): _s(v) for k, v in fields.items()}
        return cls(
            index=int(f["i"]),
            token_id=int(f["t"]) if "t" in f else None,
            text=f.get("x", ""),
            finish_reason=f.get("f") or None,
            worker_id=f.get("w", ""),
            ts=float(f.get("s", "0")),
        )


def output_tokens(entries: list[TokenEntry]) -> list[int]:
    """The generated token ids in order, each index once (first write wins)."""
    by_index: dict[int, int] = {}
    for e in entries:
        if e.token_id is not None and e.index not in by_index:
            by_index[e.index] = e.token_id
    out: list[int] = []
    while len(out) in by_index:
        out.append(by_index[len(out)])
    return out


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    worker_id: str
    address: str
    boot_id: str
    started_s: float
    transfer_address: str = ""  # host:port of its KV-transfer store; peers must match it
    # No registration epoch: fencing is per request (RequestRecord's lease moves on with each
    # (re)assignment and migration), which stops exactly the requests a worker lost, and a
    # worker taken for dead that comes back re-registers and is live again.

    def to_json(self) -> str:
        return json.dumps({"v": SCHEMA_VERSION, **asdict(self)})

    @classmethod
    def from_json(cls, raw: bytes | str) -> WorkerInfo:
        d = _loads(raw)
        d.pop("v")
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})  # an older field: ignored


_SEQ_FIELDS = (
    "request_id", "model", "num_pages", "num_tokens", "num_computed_tokens",
    "num_output_tokens", "arrival_s", "predicted_output_tokens",
)


@dataclass(frozen=True, slots=True)
class Occupancy:
    """A worker's heartbeat: its models, KV pages, queues and requests. Stored with a TTL.

    ``seqs`` lists the worker's requests compactly (one list of ``_SEQ_FIELDS`` each);
    ``boot_id`` and ``intake_seq`` let the scheduler tell which of its assignments the
    report already counts.
    """

    worker_id: str
    models: tuple[str, ...]
    num_total_pages: int
    num_free_pages: int
    num_reserved_pages: int = 0
    tokens_per_page: dict[str, int] = field(default_factory=dict)
    num_running: int = 0
    num_waiting: int = 0
    loading: bool = False
    ts: float = 0.0
    num_queued_pages: int = 0
    boot_id: str = ""
    intake_seq: int = 0
    seqs: tuple[SeqReport, ...] = ()
    page_size_bytes: int = 0
    layers: dict[str, tuple[int, int]] = field(default_factory=dict)  # layer range per model
    shapes: dict[str, ModelShapeView] = field(default_factory=dict)  # bytes per layer etc.
    groups: dict[str, StageView] = field(default_factory=dict)  # pipeline groups it is in
    node: str = ""

    def to_json(self) -> str:
        d = asdict(self)
        d["models"] = list(self.models)
        d["seqs"] = [[getattr(s, f) for f in _SEQ_FIELDS] for s in self.seqs]
        d["layers"] = {m: list(r) for m, r in self.layers.items()}
        d["shapes"] = {m: s.to_list() for m, s in self.shapes.items()}
        d["groups"] = {m: {"group_id": g.group_id, "rank": g.rank, "members": list(g.members),
                           "ranges": [list(r) for r in g.ranges]}
                       for m, g in self.groups.items()}
        return json.dumps({"v": SCHEMA_VERSION, **d})

    @classmethod
    def from_json(cls, raw: bytes | str) -> Occupancy:
        d = _loads(raw)
        d.pop("v")
        d["models"] = tuple(d["models"])
        d["seqs"] = tuple(SeqReport(*s) for s in d.get("seqs", ()))
        d["layers"] = {m: (int(r[0]), int(r[1])) for m, r in d.get("layers", {}).items()}
        d["shapes"] = {m: ModelShapeView(*s) for m, s in d.get("shapes", {}).items()}
        d["groups"] = {
            m: StageView(g["group_id"], int(g["rank"]), tuple(g["members"]),
                         tuple((int(a), int(b)) for a, b in g["ranges"]))
            for m, g in d.get("groups", {}).items()
        }
        return cls(**d)

    def report(self) -> OccupancyReport:
        """The policy cores' view of this heartbeat."""
        return OccupancyReport(
            self.worker_id, self.models, self.num_total_pages, self.num_free_pages,
            self.num_reserved_pages, self.num_queued_pages, dict(self.tokens_per_page),
            self.num_running, self.num_waiting, self.boot_id, self.intake_seq, self.seqs,
            self.page_size_bytes, dict(self.layers), dict(self.shapes), dict(self.groups),
            self.node,
        )


@dataclass(frozen=True, slots=True)
class PlanRecord:
    version: int
    placements: tuple[tuple[str, str], ...]  # (worker_id, model)
    ts: float = 0.0

    def models(self) -> tuple[str, ...]:
        return tuple(sorted({m for _, m in self.placements}))

    def models_of(self, worker_id: str) -> tuple[str, ...]:
        return tuple(m for w, m in self.placements if w == worker_id)

    def to_json(self) -> str:
        return json.dumps(
            {"v": SCHEMA_VERSION, "version": self.version, "ts": self.ts,
             "placements": [{"worker_id": w, "model": m} for w, m in self.placements]}
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> PlanRecord:
        d = _loads(raw)
        return cls(
            version=int(d["version"]),
            placements=tuple((p["worker_id"], p["model"]) for p in d["placements"]),
            ts=float(d.get("ts", 0.0)),
        )


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the fleet config says of a served model that the gateway needs per request."""

    name: str
    slo: ServiceLevel = ServiceLevel()
    max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS
    max_queued_tokens: int = DEFAULT_MAX_QUEUED_TOKENS

    def to_json(self) -> str:
        return json.dumps({"v": SCHEMA_VERSION, "name": self.name, "slo": self.slo.to_dict(),
                           "max_queued_requests": self.max_queued_requests,
                           "max_queued_tokens": self.max_queued_tokens})

    @classmethod
    def from_json(cls, raw: bytes | str) -> ModelInfo:
        d = _loads(raw)
        return cls(d["name"], ServiceLevel.from_dict(d.get("slo")),
                   int(d.get("max_queued_requests", DEFAULT_MAX_QUEUED_REQUESTS)),
                   int(d.get("max_queued_tokens", DEFAULT_MAX_QUEUED_TOKENS)))


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # assign, requeue, migrate, worker_dead, plan, load, unload, cancel, drain,
    # drop, restore (pipeline groups)
    ts: float
    data: dict[str, Any] = field(default_factory=dict)

    def to_fields(self) -> dict[str, str]:
        return {"v": str(SCHEMA_VERSION), "kind": self.kind, "ts": repr(self.ts),
                "data": json.dumps(self.data)}

    @classmethod
    def from_fields(cls, fields: dict[Any, Any]) -> Event:
        f = {_s(k): _s(v) for k, v in fields.items()}
        _check_version(f.get("v"))
        return cls(f["kind"], float(f["ts"]), json.loads(f.get("data", "{}")))


@dataclass(frozen=True, slots=True)
class FleetSample:
    """Which live workers were active (holding or assigned a request) and which idle, at
    ``ts``: the series an autoscaler reads to give idle GPUs back."""

    ts: float
    active: tuple[str, ...]
    idle: tuple[str, ...]

    def to_fields(self) -> dict[str, str]:
        return {"v": str(SCHEMA_VERSION), "ts": repr(self.ts), "active": ",".join(self.active),
                "idle": ",".join(self.idle)}

    @classmethod
    def from_fields(cls, fields: dict[Any, Any]) -> FleetSample:
        f = {_s(k): _s(v) for k, v in fields.items()}
        _check_version(f.get("v"))
        return cls(float(f["ts"]), tuple(w for w in f.get("active", "").split(",") if w),
                   tuple(w for w in f.get("idle", "").split(",") if w))
