from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Placement(_message.Message):
    __slots__ = ("worker_id", "model")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    model: str
    def __init__(self, worker_id: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class GetPlanRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetPlanResponse(_message.Message):
    __slots__ = ("version", "placements")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PLACEMENTS_FIELD_NUMBER: _ClassVar[int]
    version: int
    placements: _containers.RepeatedCompositeFieldContainer[Placement]
    def __init__(self, version: _Optional[int] = ..., placements: _Optional[_Iterable[_Union[Placement, _Mapping]]] = ...) -> None: ...

class ReconcileRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReconcileResponse(_message.Message):
    __slots__ = ("num_loads", "num_unloads")
    NUM_LOADS_FIELD_NUMBER: _ClassVar[int]
    NUM_UNLOADS_FIELD_NUMBER: _ClassVar[int]
    num_loads: int
    num_unloads: int
    def __init__(self, num_loads: _Optional[int] = ..., num_unloads: _Optional[int] = ...) -> None: ...
