"""A private cache dir per session (tiny-llama is built into it once)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def kvfleet_cache(tmp_path_factory: pytest.TempPathFactory):
    mp = pytest.MonkeyPatch()
    mp.setenv("KVFLEET_CACHE_DIR", str(tmp_path_factory.mktemp("kvfleet-cache")))
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    yield
    mp.undo()
