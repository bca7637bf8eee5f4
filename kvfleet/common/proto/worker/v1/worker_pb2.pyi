from ...common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AssignRequest(_message.Message):
    __slots__ = ("request_id", "model", "prompt_token_ids", "output_token_ids", "sampling", "arrival_s", "service_level", "predicted_output_tokens", "lease")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    ARRIVAL_S_FIELD_NUMBER: _ClassVar[int]
    SERVICE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    output_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: _common_pb2.SamplingParams
    arrival_s: float
    service_level: _common_pb2.ServiceLevel
    predicted_output_tokens: int
    lease: int
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., output_token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., arrival_s: _Optional[float] = ..., service_level: _Optional[_Union[_common_pb2.ServiceLevel, _Mapping]] = ..., predicted_output_tokens: _Optional[int] = ..., lease: _Optional[int] = ...) -> None: ...

class AssignResponse(_message.Message):
    __slots__ = ("boot_id", "intake_seq")
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    INTAKE_SEQ_FIELD_NUMBER: _ClassVar[int]
    boot_id: str
    intake_seq: int
    def __init__(self, boot_id: _Optional[str] = ..., intake_seq: _Optional[int] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("found",)
    FOUND_FIELD_NUMBER: _ClassVar[int]
    found: bool
    def __init__(self, found: _Optional[bool] = ...) -> None: ...

class LoadRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class LoadResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, models: _Optional[_Iterable[str]] = ...) -> None: ...

class UnloadRequest(_message.Message):
    __slots__ = ("model", "drain")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    model: str
    drain: bool
    def __init__(self, model: _Optional[str] = ..., drain: _Optional[bool] = ...) -> None: ...

class UnloadResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, models: _Optional[_Iterable[str]] = ...) -> None: ...

class MigrateRequest(_message.Message):
    __slots__ = ("request_id", "target_worker_id", "target_address", "mode")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    target_worker_id: str
    target_address: str
    mode: str
    def __init__(self, request_id: _Optional[str] = ..., target_worker_id: _Optional[str] = ..., target_address: _Optional[str] = ..., mode: _Optional[str] = ...) -> None: ...

class MigrateResponse(_message.Message):
    __slots__ = ("num_tokens", "num_bytes", "duration_s", "pause_s", "num_rounds", "mode")
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_BYTES_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    PAUSE_S_FIELD_NUMBER: _ClassVar[int]
    NUM_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    num_tokens: int
    num_bytes: int
    duration_s: float
    pause_s: float
    num_rounds: int
    mode: str
    def __init__(self, num_tokens: _Optional[int] = ..., num_bytes: _Optional[int] = ..., duration_s: _Optional[float] = ..., pause_s: _Optional[float] = ..., num_rounds: _Optional[int] = ..., mode: _Optional[str] = ...) -> None: ...

class ReceiveSequenceRequest(_message.Message):
    __slots__ = ("source_worker_id", "group_id", "store_host", "store_port", "request_id", "mode")
    SOURCE_WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    STORE_HOST_FIELD_NUMBER: _ClassVar[int]
    STORE_PORT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    source_worker_id: str
    group_id: str
    store_host: str
    store_port: int
    request_id: str
    mode: str
    def __init__(self, source_worker_id: _Optional[str] = ..., group_id: _Optional[str] = ..., store_host: _Optional[str] = ..., store_port: _Optional[int] = ..., request_id: _Optional[str] = ..., mode: _Optional[str] = ...) -> None: ...

class ReceiveSequenceResponse(_message.Message):
    __slots__ = ("num_tokens",)
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    num_tokens: int
    def __init__(self, num_tokens: _Optional[int] = ...) -> None: ...

class PipelineStage(_message.Message):
    __slots__ = ("worker_id", "address", "first_layer", "last_layer")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    FIRST_LAYER_FIELD_NUMBER: _ClassVar[int]
    LAST_LAYER_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    address: str
    first_layer: int
    last_layer: int
    def __init__(self, worker_id: _Optional[str] = ..., address: _Optional[str] = ..., first_layer: _Optional[int] = ..., last_layer: _Optional[int] = ...) -> None: ...

class DropLayersRequest(_message.Message):
    __slots__ = ("group_id", "model", "stages", "tokens_per_page")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_PAGE_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    model: str
    stages: _containers.RepeatedCompositeFieldContainer[PipelineStage]
    tokens_per_page: int
    def __init__(self, group_id: _Optional[str] = ..., model: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[PipelineStage, _Mapping]]] = ..., tokens_per_page: _Optional[int] = ...) -> None: ...

class RegroupStats(_message.Message):
    __slots__ = ("worker_id", "num_sent", "num_recomputed", "bytes_sent", "exchange_s", "relayout_s", "reload_s", "num_moved")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_SENT_FIELD_NUMBER: _ClassVar[int]
    NUM_RECOMPUTED_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_S_FIELD_NUMBER: _ClassVar[int]
    RELAYOUT_S_FIELD_NUMBER: _ClassVar[int]
    RELOAD_S_FIELD_NUMBER: _ClassVar[int]
    NUM_MOVED_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    num_sent: int
    num_recomputed: int
    bytes_sent: int
    exchange_s: float
    relayout_s: float
    reload_s: float
    num_moved: int
    def __init__(self, worker_id: _Optional[str] = ..., num_sent: _Optional[int] = ..., num_recomputed: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., exchange_s: _Optional[float] = ..., relayout_s: _Optional[float] = ..., reload_s: _Optional[float] = ..., num_moved: _Optional[int] = ...) -> None: ...

class DropLayersResponse(_message.Message):
    __slots__ = ("duration_s", "stages")
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    duration_s: float
    stages: _containers.RepeatedCompositeFieldContainer[RegroupStats]
    def __init__(self, duration_s: _Optional[float] = ..., stages: _Optional[_Iterable[_Union[RegroupStats, _Mapping]]] = ...) -> None: ...

class JoinPipelineRequest(_message.Message):
    __slots__ = ("group", "rank", "store_host", "store_port", "rendezvous")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    STORE_HOST_FIELD_NUMBER: _ClassVar[int]
    STORE_PORT_FIELD_NUMBER: _ClassVar[int]
    RENDEZVOUS_FIELD_NUMBER: _ClassVar[int]
    group: DropLayersRequest
    rank: int
    store_host: str
    store_port: int
    rendezvous: str
    def __init__(self, group: _Optional[_Union[DropLayersRequest, _Mapping]] = ..., rank: _Optional[int] = ..., store_host: _Optional[str] = ..., store_port: _Optional[int] = ..., rendezvous: _Optional[str] = ...) -> None: ...

class JoinPipelineResponse(_message.Message):
    __slots__ = ("stats",)
    STATS_FIELD_NUMBER: _ClassVar[int]
    stats: RegroupStats
    def __init__(self, stats: _Optional[_Union[RegroupStats, _Mapping]] = ...) -> None: ...

class PrefetchLayersRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class PrefetchLayersResponse(_message.Message):
    __slots__ = ("reload_s", "num_bytes")
    RELOAD_S_FIELD_NUMBER: _ClassVar[int]
    NUM_BYTES_FIELD_NUMBER: _ClassVar[int]
    reload_s: float
    num_bytes: int
    def __init__(self, reload_s: _Optional[float] = ..., num_bytes: _Optional[int] = ...) -> None: ...

class RestoreLayersRequest(_message.Message):
    __slots__ = ("model", "group_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    group_id: str
    def __init__(self, model: _Optional[str] = ..., group_id: _Optional[str] = ...) -> None: ...

class RestoreLayersResponse(_message.Message):
    __slots__ = ("duration_s", "reload_s", "stages")
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    RELOAD_S_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    duration_s: float
    reload_s: float
    stages: _containers.RepeatedCompositeFieldContainer[RegroupStats]
    def __init__(self, duration_s: _Optional[float] = ..., reload_s: _Optional[float] = ..., stages: _Optional[_Iterable[_Union[RegroupStats, _Mapping]]] = ...) -> None: ...
