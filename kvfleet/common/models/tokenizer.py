"""The tokenizer of a model, with its chat template and an incremental detokenizer.

A GGUF file's tokenizer is converted once and saved under the cache dir, so later loads are
fast. Loaded tokenizers are kept per process.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kvfleet.common.models.checkpoint import read_spec
from kvfleet.common.models.registry import resolve_model
from kvfleet.common.models.tokenizer_files import gguf_tokenizer_dir

log = logging.getLogger(__name__)


class Tokenizer:
    """Thin wrapper over a Hugging Face tokenizer."""

    def __init__(self, hf: Any, eos_token_ids: tuple[int, ...], max_context_tokens: int) -> None:
        self.hf = hf
        self.eos_token_ids = eos_token_ids
        self.max_context_tokens = max_context_tokens

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` rendered with the chat template and a generation prompt."""
        out = self.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(out, "keys") and "input_ids" in out:
            out = out["input_ids"]
        return [int(x) for x in out]

    def detokenizer(self, prompt_ids: Sequence[int] = ()) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, prompt_ids)


class IncrementalDetokenizer:
    """Turns generated ids into text deltas; holds back incomplete UTF-8 characters."""

    CONTEXT = 4

    def __init__(self, tok: Tokenizer, prompt_ids: Sequence[int] = ()) -> None:
        self.tok = tok
        self.ids: list[int] = list(prompt_ids[-self.CONTEXT :])
        self.prefix = 0
        self.read = len(self.ids)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = self.tok.decode(self.ids[self.prefix : self.read])
        text = self.tok.decode(self.ids[self.prefix :])
        if len(text) > len(prefix_text) and not text.endswith("\ufffd"):
            delta = text[len(prefix_text) :]
            self.prefix = self.read
            self.read = len(self.ids)
            return delta
        return ""


def _hf_dir_eos(path: Path) -> tuple[int, ...]:
    import json

    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        f = path / name
        if f.is_file():
            eos = json.loads(f.read_text()).get("eos_token_id")
            for x in eos if isinstance(eos, list) else [eos]:
                if x is not None and int(x) not in ids:
                    ids.append(int(x))
    return tuple(ids)


@functools.lru_cache(maxsize=16)
def load_tokenizer(name_or_path: str) -> Tokenizer:
    """The tokenizer of a registry name, checkpoint directory or GGUF file."""
    from transformers import AutoTokenizer

    source = resolve_model(name_or_path)
    spec = read_spec(source)
    tok_dir = source.path if source.kind == "hf" else gguf_tokenizer_dir(source)
    hf = AutoTokenizer.from_pretrained(str(tok_dir))
    eos: list[int] = list(spec.eos_token_ids)
    if source.kind == "hf":
        eos += [i for i in _hf_dir_eos(source.path) if i not in eos]
    if hf.eos_token_id is not None and hf.eos_token_id not in eos:
        eos.append(int(hf.eos_token_id))
    return Tokenizer(hf, tuple(eos), spec.max_context_tokens)
