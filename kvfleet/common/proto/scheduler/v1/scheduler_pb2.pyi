from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class MigrateRequest(_message.Message):
    __slots__ = ("request_id", "target_worker_id", "mode")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    target_worker_id: str
    mode: str
    def __init__(self, request_id: _Optional[str] = ..., target_worker_id: _Optional[str] = ..., mode: _Optional[str] = ...) -> None: ...

class MigrateResponse(_message.Message):
    __slots__ = ("source_worker_id", "target_worker_id", "num_tokens", "num_bytes", "duration_s", "pause_s", "mode")
    SOURCE_WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_BYTES_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    PAUSE_S_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    source_worker_id: str
    target_worker_id: str
    num_tokens: int
    num_bytes: int
    duration_s: float
    pause_s: float
    mode: str
    def __init__(self, source_worker_id: _Optional[str] = ..., target_worker_id: _Optional[str] = ..., num_tokens: _Optional[int] = ..., num_bytes: _Optional[int] = ..., duration_s: _Optional[float] = ..., pause_s: _Optional[float] = ..., mode: _Optional[str] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ("worker_id", "undrain")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    UNDRAIN_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    undrain: bool
    def __init__(self, worker_id: _Optional[str] = ..., undrain: _Optional[bool] = ...) -> None: ...

class DrainResponse(_message.Message):
    __slots__ = ("num_running",)
    NUM_RUNNING_FIELD_NUMBER: _ClassVar[int]
    num_running: int
    def __init__(self, num_running: _Optional[int] = ...) -> None: ...
