"""Configuration: one pydantic-settings model per service, plus the fleet description.

A service reads its settings from a YAML or TOML file (``--config FILE``; a file holding
several services' sections is read by section name) and from environment variables
``KVFLEET_<SERVICE>_<FIELD>`` (nested fields with ``__``), which win over the file.
"""

from __future__ import annotations

import json
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from kvfleet.common.slo import MAX_TPOT_SLO_S, MAX_TTFT_SLO_S, ServiceLevel, priority_rank
from kvfleet.services.scheduler.core.admission import (
    DEFAULT_MAX_QUEUED_REQUESTS,
    DEFAULT_MAX_QUEUED_TOKENS,
    MAX_QUEUED_REQUESTS_LIMIT,
)

_FILE_DATA: ContextVar[dict[str, Any] | None] = ContextVar("_FILE_DATA", default=None)


def read_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    text = p.read_text()
    if p.suffix == ".toml":
        data: Any = tomllib.loads(text)
    elif p.suffix == ".json":
        data = json.loads(text)
    else:
        data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def known_policy(name: str) -> str:
    """Validator: ``name`` is a registered policy set."""
    from kvfleet.policies import policy_names

    if name not in policy_names():
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(policy_names())}")
    return name


PolicyName = Annotated[str, AfterValidator(known_policy)]


class ServiceSettings(BaseSettings):
    """Fields every service has."""

    section: ClassVar[str] = ""
    model_config = SettingsConfigDict(extra="ignore", env_nested_delimiter="__")

    redis_url: str = Field(default="", description="Redis URL (redis:// or unix://).")
    redis_max_connections: int = Field(
        default=256, ge=4, le=10_000,
        description="Redis connections this process opens at most; beyond, calls wait.",
    )
    redis_pool_timeout_s: float = Field(
        default=10.0, gt=0, le=300,
        description="How long a call waits for a free Redis connection before failing.",
    )
    host: str = Field(default="127.0.0.1", description="Address the gRPC server binds.")
    port: int = Field(default=0, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    log_level: str = Field(default="INFO", description="Python logging level.")
    fleet_token: SecretStr | None = Field(
        default=None,
        description="The fleet's shared secret: internal gRPC calls carry it and internal "
        "servers refuse calls without it (health checks excepted).",
    )
    fleet_token_file: str = Field(
        default="", description="Read the fleet token from this file (a mounted Secret)."
    )
    tls_cert_file: str = Field(
        default="", description="Mutual TLS between services: this service's certificate (PEM)."
    )
    tls_key_file: str = Field(default="", description="Mutual TLS: its private key (PEM).")
    tls_ca_file: str = Field(
        default="", description="Mutual TLS: the CA that signs every service's certificate."
    )
    tls_server_name: str = Field(
        default="", description="Mutual TLS: the name to expect in peers' certificates "
        "(empty: the host dialled)."
    )
    allow_unauthenticated: bool = Field(
        default=False,
        description="Serve without a fleet token or TLS on a non-loopback address (tests only).",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            InitSettingsSource(settings_cls, init_kwargs=_FILE_DATA.get() or {}),
        )

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> Any:
        """Settings from ``path`` (the service's section if the file has one), then the
        environment, then ``overrides``."""
        data: dict[str, Any] = {}
        if path:
            raw = read_config_file(path)
            section = raw.get(cls.section) if cls.section else None
            data = section if isinstance(section, dict) else raw
        token = _FILE_DATA.set(data)
        try:
            return cls(**overrides)
        finally:
            _FILE_DATA.reset(token)


class EngineSettings(BaseModel):
    """What a worker passes to its engine."""

    page_size_bytes: int = Field(
        default=1 << 20, ge=1024,
        description="KV page size in bytes (1 MiB: 22 tokens of SmolLM2-135M in float32).",
    )
    max_num_batched_tokens: int = Field(default=2048, ge=16, description="Per-step token budget.")
    max_num_seqs: int = Field(default=64, ge=1, description="Sequences in one batch at most.")
    device: str = Field(default="cpu", description="cpu, cuda or cuda:N.")
    dtype: str = Field(
        default="float32", pattern="^(float32|bfloat16|float16)$",
        description="Weights and KV dtype (float32, bfloat16, float16); on CPUs without "
        "bfloat16 arithmetic 16-bit models compute in float32.",
    )
    model_dtypes: dict[str, str] = Field(
        default_factory=dict, description="Per-model dtype overrides: model name -> dtype."
    )
    compile: str = Field(
        default="auto", pattern="^(auto|off|decode|all)$",
        description="torch.compile of the layer step: off, decode, all; auto: decode on CUDA "
        "(with CUDA graphs), off on CPU.",
    )
    num_threads: int | None = Field(default=None, ge=1, description="torch threads; None: default.")
    cuda_reserve_bytes: int = Field(
        default=1 << 30, ge=0,
        description="Left free on a GPU when the worker's memory_bytes is unset (CUDA context, "
        "allocator slack).",
    )


class PipelineSettings(BaseModel):
    """How a worker serves as a stage of a pipeline group (KunServe)."""

    link_bytes_per_s: float = Field(
        default=1e9, gt=0,
        description="Bandwidth to the other members, for choosing between sending a "
        "request's KV and recomputing it when a group forms or dissolves.",
    )
    link_latency_s: float = Field(default=1e-4, ge=0, description="Latency of that link.")
    prefill_tokens_per_s: float = Field(
        default=2000.0, gt=0,
        description="Prefill throughput a recompute runs at (the other side of that choice).",
    )
    keepalive_s: float = Field(
        default=5.0, gt=0, description="An idle first stage sends an empty step this often."
    )
    timeout_s: float = Field(
        default=120.0, gt=0,
        description="A stage waiting longer than this on another takes the group as broken "
        "(each member then reloads its layers and serves alone).",
    )


class OverloadSettings(BaseModel):
    """When the planner's overload policy drops and restores layers (KunServe)."""

    overload_ratio: float = Field(
        default=1.0, gt=0, description="KV demand above this share of capacity is overload ..."
    )
    min_held_ratio: float = Field(
        default=0.9, ge=0, le=1,
        description="... while the pools hold at least this share (a queue behind free pages "
        "waits for compute, which dropping layers would not add).",
    )
    overload_hold_s: float = Field(
        default=1.0, ge=0, description="Overload must last this long before layers drop."
    )
    restore_ratio: float = Field(
        default=0.6, gt=0,
        description="A group is restored when demand stays below this share of the capacity "
        "the fleet would have without it ...",
    )
    restore_hold_s: float = Field(default=5.0, ge=0, description="... for this long.")
    cooldown_s: float = Field(
        default=2.0, ge=0, description="No new action for a model this soon after the last."
    )
    max_group_size: int = Field(default=4, ge=2, le=64, description="Most workers in a group.")
    head_cost_layers: float = Field(
        default=0.0, ge=0,
        description="The LM head's compute in decoder layers, when balancing stages.",
    )
    interval_s: float = Field(default=0.25, gt=0, description="How often the policy runs.")
    timeout_s: float = Field(
        default=600.0, gt=0, description="Deadline of one drop or restore (RPC to the leader)."
    )

    def thresholds(self):  # type: ignore[no-untyped-def]
        from kvfleet.services.planner.core.overload import OverloadThresholds

        return OverloadThresholds(
            self.overload_ratio, self.min_held_ratio, self.overload_hold_s, self.restore_ratio,
            self.restore_hold_s,
            self.cooldown_s, self.max_group_size, self.head_cost_layers,
        )


class GatewaySettings(ServiceSettings):
    section: ClassVar[str] = "gateway"
    model_config = SettingsConfigDict(
        env_prefix="KVFLEET_GATEWAY_", extra="ignore", env_nested_delimiter="__"
    )

    http_port: int = Field(default=8000, ge=0, le=65535, description="OpenAI HTTP API port.")
    public_tls_cert_file: str = Field(
        default="", description="TLS certificate (PEM) for the public doors (HTTP and gRPC)."
    )
    public_tls_key_file: str = Field(default="", description="Its private key (PEM).")
    api_keys: list[str] = Field(
        default_factory=list,
        description="Accepted keys in plain text (hashed at start, never stored); prefer "
        "api_key_hashes. Both empty: the gateway is open.",
    )
    api_key_hashes: list[str] = Field(
        default_factory=list,
        description="Accepted keys as 'sha256:<hex digest>' (kvfleet up writes these).",
    )
    default_max_tokens: int = Field(
        default=256, ge=1, description="max_tokens when a request omits it."
    )
    max_tokens_limit: int = Field(default=8192, ge=1, description="Largest max_tokens accepted.")
    max_body_bytes: int = Field(default=4 << 20, ge=1024, description="Largest HTTP body accepted.")
    first_token_timeout_s: float = Field(
        default=600.0, gt=0, le=86_400,
        description="Give up (504, request cancelled) when no token came this long after "
        "the request was accepted (queue time included).",
    )
    queue_timeout_s: float = Field(
        default=300.0, gt=0, le=86_400,
        description="Give up (504, request cancelled) when the request still waits for a "
        "worker this long after it was accepted.",
    )
    idle_timeout_s: float = Field(
        default=120.0, gt=0, le=86_400,
        description="Give up (504, request cancelled) when a started stream gets no token "
        "this long.",
    )
    request_timeout_s: float = Field(
        default=3600.0, gt=0, le=7 * 86_400,
        description="Give up (504, request cancelled) on a request running this long in all.",
    )
    max_in_flight: int = Field(
        default=192, ge=1, le=100_000,
        description="Requests this replica serves at once; more get 429 with Retry-After. "
        "Keep it below redis_max_connections: each stream holds one while it waits.",
    )
    tokenizer_threads: int = Field(
        default=2, ge=1, le=64,
        description="Threads that tokenize and render chat templates off the event loop.",
    )
    retry_after_s: int = Field(
        default=1, ge=0, description="Retry-After of a 429 when a model's queue is full."
    )
    predictor_quantile: float = Field(
        default=0.5, gt=0, lt=1, description="Output-length quantile the online predictor gives."
    )
    predictor_min_samples: int = Field(
        default=16, ge=1, description="Samples a prompt-length bucket needs before it is used."
    )
    predictor_prior_tokens: int = Field(
        default=128, ge=1, description="Prediction for a model with too few completed requests."
    )
    predictor_sync_s: float = Field(
        default=2.0, gt=0, description="Re-read the shared predictor counts this often."
    )
    predictor_warm_start: dict[str, str] = Field(
        default_factory=dict,
        description="model -> trace file whose (input, output) lengths seed the predictor once.",
    )


class SchedulerSettings(ServiceSettings):
    section: ClassVar[str] = "scheduler"
    model_config = SettingsConfigDict(
        env_prefix="KVFLEET_SCHEDULER_", extra="ignore", env_nested_delimiter="__"
    )

    policy: PolicyName = Field(default="vllm", description="Policy set: its dispatch policy.")
    consumer: str = Field(
        default="scheduler-0",
        description="Consumer name in the queue group; "
        "keep it across restarts to reclaim own pending entries first.",
    )
    tick_s: float = Field(default=0.02, gt=0, le=5, description="Dispatch/liveness loop period.")
    reclaim_idle_s: float = Field(
        default=5.0,
        ge=0,
        description="Claim other consumers' pending entries idle this long (a dead scheduler's).",
    )
    rpc_timeout_s: float = Field(default=10.0, gt=0, description="Deadline of calls to workers.")
    worker_queue_fraction: float = Field(
        default=1.0, ge=0,
        description="A worker takes requests until it is committed this share of its pool "
        "beyond its free pages; the rest wait in the scheduler's queue.",
    )


class SloConfig(BaseModel):
    """A model's default service level; requests may override it."""

    model_config = ConfigDict(extra="forbid")

    ttft_s: float | None = Field(default=None, gt=0, le=MAX_TTFT_SLO_S,
                                 description="Time-to-first-token target (s).")
    tpot_s: float | None = Field(default=None, gt=0, le=MAX_TPOT_SLO_S,
                                 description="Time-per-output-token target (s).")
    priority: Literal["high", "normal", "low"] = Field(
        default="normal", description="Priority class of the model's requests."
    )

    def service_level(self) -> ServiceLevel:
        return ServiceLevel(self.ttft_s, self.tpot_s, priority_rank(self.priority))


class ModelConfig(BaseModel):
    name: str
    weight_bytes: int = Field(default=0, ge=0, description="Weight bytes (0: not accounted).")
    slo: SloConfig = Field(default_factory=SloConfig, description="Default service level.")
    max_queued_requests: int = Field(
        default=DEFAULT_MAX_QUEUED_REQUESTS, ge=1, le=MAX_QUEUED_REQUESTS_LIMIT,
        description="Requests that may wait for a worker; past it the gateway answers 429.",
    )
    max_queued_tokens: int = Field(
        default=DEFAULT_MAX_QUEUED_TOKENS, ge=1,
        description="Prompt tokens that may wait for a worker; past it the gateway answers 429.",
    )


class WorkerConfig(BaseModel):
    id: str
    memory_bytes: int = Field(default=1 << 30, ge=1 << 20, description="Memory budget in bytes.")
    models: list[str] = Field(default_factory=list, description="Empty: every model.")
    port: int = Field(default=0, ge=0, le=65535)
    device: str = "cpu"


class PlannerSettings(ServiceSettings):
    section: ClassVar[str] = "planner"
    model_config = SettingsConfigDict(
        env_prefix="KVFLEET_PLANNER_", extra="ignore", env_nested_delimiter="__"
    )

    models: list[ModelConfig] = Field(default_factory=list, description="Models served.")
    workers: list[WorkerConfig] = Field(default_factory=list, description="Workers and budgets.")
    policy: PolicyName = Field(
        default="vllm", description="Policy set: its placement, migration and overload policies."
    )
    reconcile_s: float = Field(default=0.5, gt=0, description="How often the plan is re-applied.")
    migration_interval_s: float = Field(
        default=0.5, gt=0, description="How often the migration policy runs."
    )
    migration_timeout_s: float = Field(
        default=60.0, gt=0, description="Deadline of one migration (the source's Migrate call)."
    )
    migration_link_bytes_per_s: float = Field(
        default=1e9, ge=0,
        description="Each worker's link for KV transfers, bytes/s (a migration policy's "
        "communication budget; 0: unlimited). Loopback gloo moves about 1 GB/s.",
    )
    reprefill_tokens_per_s: float = Field(
        default=400.0, ge=0,
        description="Tokens/s an idle worker re-prefills (a migration policy's computation "
        "budget; 0: never re-prefill).",
    )
    reprefill_busy_share: float = Field(
        default=0.25, ge=0, le=1,
        description="The share of reprefill_tokens_per_s a worker with running requests "
        "offers (re-prefill slows its batch).",
    )
    activity_interval_s: float = Field(
        default=1.0, gt=0,
        description="How often the planner records which workers are active and which idle.",
    )
    rpc_timeout_s: float = Field(default=600.0, gt=0, description="Deadline of Load/Unload calls.")
    replan_s: float = Field(
        default=30.0, gt=0,
        description="How often a placement that adapts (seallm) re-plans from measured load.",
    )
    load_window_s: float = Field(
        default=60.0, gt=0, description="Window the per-model load is measured over."
    )
    placement_gpu: str = Field(
        default="CPU",
        description="Cost-model preset (kvfleet.sim.presets) latency-aware placement predicts "
        "step times with.",
    )
    weight_load_bytes_per_s: float = Field(
        default=2e8, gt=0, description="How fast a worker loads weights (the cost of a swap)."
    )
    dtype_bytes: int = Field(default=4, ge=1, le=8, description="Bytes per weight on workers.")
    expected_load: dict[str, list[float]] = Field(
        default_factory=dict,
        description="model -> [requests/s, mean prompt tokens, mean output tokens]: the load a "
        "placement starts from (before any is measured).",
    )
    overload: OverloadSettings = Field(
        default_factory=lambda: OverloadSettings(),
        description="The overload policy's thresholds (layer drops and restores).",
    )


class WorkerSettings(ServiceSettings):
    section: ClassVar[str] = "worker"
    model_config = SettingsConfigDict(
        env_prefix="KVFLEET_WORKER_", extra="ignore", env_nested_delimiter="__"
    )

    worker_id: str = Field(default="worker-0", description="Unique id in the fleet.")
    policy: PolicyName = Field(default="vllm", description="Policy set: its batch policy.")
    memory_bytes: int | None = Field(
        default=None, ge=1 << 20,
        description="Memory budget in bytes for weights + KV pool + activations. Unset: on a "
        "GPU its free memory less engine.cuda_reserve_bytes; on CPU 1 GiB.",
    )
    engine: EngineSettings = Field(default_factory=lambda: EngineSettings())
    preload: list[str] = Field(default_factory=list, description="Models to load at start.")
    models: list[ModelConfig] = Field(
        default_factory=list,
        description="The fleet's models (the fleet file's `models`): Load accepts these "
        "names. Empty: only the built-in model names.",
    )
    model_dirs: list[str] = Field(
        default_factory=list,
        description="Directories whose checkpoints Load may also read (any other local path "
        "is refused).",
    )
    heartbeat_s: float = Field(default=0.25, gt=0, description="Heartbeat/occupancy period.")
    heartbeat_ttl_s: float = Field(
        default=2.0, gt=0, description="A worker silent this long is dead."
    )
    occupancy_min_s: float = Field(
        default=0.05, gt=0, description="Occupancy writes at most this often."
    )
    advertise_host: str = Field(
        default="",
        description="Host others reach this worker on (a pod IP when binding 0.0.0.0); "
        "empty: the bind host.",
    )
    transfer_host: str = Field(
        default="", description="Host peers reach our TCPStore on; empty: the advertised host."
    )
    transfer_backend: str = Field(
        default="auto",
        pattern="^(auto|gloo|nccl)$",
        description="auto: NCCL on CUDA, gloo on CPU; gloo stages device KV through host memory.",
    )
    transfer_timeout_s: float = Field(
        default=60.0, gt=0, description="Process group/transfer timeout."
    )
    node: str = Field(
        default="", description="The machine it runs on (workers of one node share the "
        "fastest links); empty: its advertised host.",
    )
    pipeline: PipelineSettings = Field(
        default_factory=lambda: PipelineSettings(),
        description="Serving as a stage of a pipeline group.",
    )
    live_migration_rounds: int = Field(
        default=8, ge=1, le=64,
        description="Live migration: most KV copies made while the request keeps running.",
    )
    live_migration_final_tokens: int = Field(
        default=16, ge=0,
        description="Live migration: stop the request once a round has this few new tokens.",
    )


class FleetConfig(BaseModel):
    """What ``kvfleet up --config FILE`` reads: models, workers with budgets, ports."""

    models: list[ModelConfig] = Field(default_factory=lambda: [ModelConfig(name="smollm2-135m")])
    workers: list[WorkerConfig] = Field(
        default_factory=lambda: [WorkerConfig(id="worker-0"), WorkerConfig(id="worker-1")]
    )
    policy: PolicyName = Field(
        default="vllm", description="Policy set every service uses (kvfleet.policies)."
    )
    host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    scheduler_port: int = Field(default=0, ge=0, le=65535)
    planner_port: int = Field(default=0, ge=0, le=65535)
    api_keys: list[str] = Field(
        default_factory=list,
        description="Gateway API keys; empty: kvfleet up makes one (in secrets.json).",
    )
    open_gateway: bool = Field(
        default=False, description="Serve the gateway without API keys (loopback only)."
    )
    redis_appendonly: bool = Field(
        default=True, description="The private Redis keeps an append-only file (AOF)."
    )
    redis_appendfsync: Literal["always", "everysec"] = Field(
        default="always",
        description="AOF fsync policy: always (no acknowledged write is lost) or everysec.",
    )
    engine: EngineSettings = Field(default_factory=lambda: EngineSettings())
    gateway: dict[str, Any] = Field(default_factory=dict, description="Extra gateway settings.")
    scheduler: dict[str, Any] = Field(default_factory=dict, description="Extra scheduler settings.")
    planner: dict[str, Any] = Field(default_factory=dict, description="Extra planner settings.")
    worker: dict[str, Any] = Field(default_factory=dict, description="Extra for every worker.")

    @classmethod
    def load(cls, path: str | Path | None) -> FleetConfig:
        return cls.model_validate(read_config_file(path)) if path else cls()
