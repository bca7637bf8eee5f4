"""The vLLM v0 baseline (before chunked prefill): a prefill pauses decoding. Pure.

A step either prefills or decodes. While waiting prompts can be admitted (in arrival order,
whole, within the token budget, the sequence cap and the free pages), the step prefills
them and every running sequence waits. Otherwise every running sequence decodes one token;
when pages run out, the most recently arrived running sequence is preempted by recompute,
repeatedly, until the older ones fit. A prompt longer than the whole token budget is
prefilled as the only prompt of its step (vLLM v0 sizes its budget to the model's context).
"""

from __future__ import annotations

from kvfleet.services.worker.core.batch_policy import (
    Chunk,
    EngineView,
    StepPlan,
    pages_needed,
)


class VllmV0BatchPolicy:
    name = "vllm-v0"

    def plan(self, view: EngineView, now_s: float) -> StepPlan:
        prefill = self._prefill(view)
        if prefill:
            return StepPlan(tuple(prefill))
        return self._decode(view)

    def _prefill(self, view: EngineView) -> list[Chunk]:
        budget = view.token_budget
        free = view.num_free_pages
        chunks: list[Chunk] = []
        # Sequences holding pages with prompt left (migrated in mid-prompt) go first.
        queue = [s for s in view.running if s.num_uncomputed_tokens > 1] + list(view.waiting)
        num_seqs = len(view.running)
        for seq in queue:
            n = seq.num_uncomputed_tokens
            fresh = seq.num_pages == 0
            if fresh and num_seqs >= view.max_num_seqs:
                break
            if n > budget and (chunks or n <= view.token_budget):
                break
            need = pages_needed(seq, n)
            if need > free:
                break
            chunks.append(Chunk(seq.seq_id, n))
            budget -= n
            free -= need
            num_seqs += fresh
        return chunks

    def _decode(self, view: EngineView) -> StepPlan:
        free = view.num_free_pages
        running = [s for s in view.running if s.num_uncomputed_tokens == 1]
        preempted: list[str] = []
        chunks: list[Chunk] = []
        i = 0
        while i < len(running):
            seq = running[i]
            need = pages_needed(seq, 1)
            while need > free and len(running) - 1 > i:
                victim = running.pop()
                preempted.append(victim.seq_id)
                free += victim.num_pages
            if need > free:
                running.pop(i)
                preempted.append(seq.seq_id)
                free += seq.num_pages
                break
            chunks.append(Chunk(seq.seq_id, 1))
            free -= need
            i += 1
        # After a preemption the next step may prefill again with the pages it freed.
        return StepPlan(tuple(chunks), tuple(preempted), repeat_steps=1 if preempted else None)
