"""The engine core: scheduler, KV cache (through the executor), forward, sampler and beam search.

It knows token ids only. Each step reads ``schedule -> forward -> sample`` and ends in one
:class:`CoreOutput` holding every sequence's new token; text, stop strings and protocol events
are the front end's (engine/engine.py with engine/output.py). The core finishes a sequence on EOS
or its token budget (the same rule the output processor applies, so both agree on the token that
ends it); a stop string is found by the front end, which sends the request back as ``finished``.

:class:`CoreLoop` drives a core from an inbox: the same loop runs in a thread of the server
process (``engine_process=False``) or as the main loop of the engine-core process
(engine/core_proc.py).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from streamhost.engine.beam import beam_search
from streamhost.engine.config import EngineConfig
from streamhost.engine.core_messages import CoreInfo, CoreInput, CoreOutput, CoreRequest, CoreStats, RequestKey
from streamhost.engine.executor import dtype_name
from streamhost.engine.executor_api import Executor
from streamhost.engine.kv_cache import Segment
from streamhost.engine.sampling import RequestSampler, sample_batch
from streamhost.engine.scheduler import Scheduler, StepWork
from streamhost.engine.sequence import Sequence, Status
from streamhost.engine.types import FinishReason
from streamhost.engine.validation import ValidatedRequest

log = logging.getLogger(__name__)

# Prompt tokens per step on a CPU. Measured with bench/serve.py's mixed prompts at 16 streams
# (a burst of 15 prompts, ~2,700 tokens): 512 gave TTFT p50 1.04 s / max 2.94 s, 1024 gave
# 1.10 / 2.59 s, one whole-burst step (TGI's way) 2.57 / 2.83 s. Per token a 1024-token step is
# ~8% cheaper than a 512-token one (the linear layers) and it pays the running streams' decode
# work half as often; a step of it takes about a second on 2 cores.
CPU_PREFILL_TOKENS_PER_STEP = 1024
GPU_PREFILL_TOKENS_PER_STEP = 2048  # not measured here (no GPU was lent); vLLM's chunked-prefill default


class EngineCore:
    """Owns the running sequences of one model; only the loop's thread calls it."""

    def __init__(self, executor: Executor, config: EngineConfig) -> None:
        self.config = config
        self.executor = executor
        self.limits = config.limits or config.limit_settings.resolve(executor.max_positions)
        chunk = config.prefill_chunk or (
            GPU_PREFILL_TOKENS_PER_STEP if executor.device.type == "cuda" else CPU_PREFILL_TOKENS_PER_STEP
        )
        self.scheduler = Scheduler(self.limits, prefill_chunk=chunk, on_admit=self._admit)
        self._newcomers: list[Sequence] = []  # admitted by this step's schedule, rows taken
        executor.configure(self.limits, self.scheduler.prefill_chunk)
        self.eos_ids = frozenset(executor.eos_token_ids())
        self.stats = CoreStats()
        self._seqs: dict[RequestKey, Sequence] = {}
        self._beam_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamhost-beam")
        self._beam_lock = threading.Lock()
        self._beam_done: list[tuple[RequestKey, list[int] | None, str | None]] = []
        self.wake: Callable[[], None] = lambda: None  # set by the loop: a beam finished

    def info(self) -> CoreInfo:
        executor = self.executor
        return CoreInfo(
            model_path=executor.model_path,
            executor_name=executor.name,
            dtype=dtype_name(executor.dtype),
            device_type=executor.device.type,
            max_positions=executor.max_positions,
            prefill_chunk=self.scheduler.prefill_chunk,
            limits=self.limits,
            eos_ids=self.eos_ids,
            supports_beam_search=executor.supports_beam_search,
            describe=executor.describe(),
            tokenizer=executor.tokenizer,
        )

    # -- input ---------------------------------------------------------------------------------
    def apply(self, message: CoreInput) -> None:
        """New requests join the waiting queue; aborted and finished ones are freed before the next step."""
        for request in message.new:
            seq = Sequence(
                request_id=str(request.request_id),
                prompt_ids=list(request.prompt_ids),
                max_new_tokens=request.max_new_tokens,
                sampler=RequestSampler(request.params, request.prompt_ids, device="cpu"),
                prompt_logprobs=request.prompt_logprobs,
                arrival=request.arrival,
                key=request.request_id,
            )
            self._seqs[seq.key] = seq
            self.scheduler.add(seq)
        for request in message.beams:
            self._beam_pool.submit(self._run_beam, request)
        for rid in message.aborted:
            self._drop(rid, counted=True)
        for rid in message.finished:
            self._drop(rid, counted=False)

    def _drop(self, request_id: RequestKey, *, counted: bool) -> None:
        seq = self._seqs.pop(request_id, None)
        if seq is None:  # finished in the core already, or never got here
            return
        self._finish(seq)
        if counted:
            self.stats.aborted += 1

    def _run_beam(self, request: CoreRequest) -> None:
        """Beam search runs beside the batch (its own thread) and returns all tokens at once."""
        validated = ValidatedRequest(
            request.prompt_ids, request.params, len(request.prompt_ids), request.max_new_tokens
        )
        try:
            ids, error = beam_search(self.executor, validated, self.eos_ids), None
        except Exception as exc:
            log.exception("beam search failed")
            ids, error = None, f"generation failed: {type(exc).__name__}: {exc}"
        with self._beam_lock:
            self._beam_done.append((request.request_id, ids, error))
        self.wake()

    def has_work(self) -> bool:
        return self.scheduler.has_work() or bool(self._beam_done)

    # -- the step ------------------------------------------------------------------------------
    def step(self) -> CoreOutput | None:
        """One step: schedule -> forward -> sample; ``None`` when there was nothing to do or say."""
        out = CoreOutput()
        self._collect_beams(out)
        sched = self.scheduler
        work = sched.schedule() if sched.has_work() else None
        if work:
            self._step(work, out)
        elif self.executor.live_rows == 0:
            # Idle: keep a modest cache for the next request (reallocating costs its TTFT), give a large one back.
            self.executor.release_idle_memory(self.config.idle_kv_bytes)
        stats = self.stats
        stats.waiting, stats.running = len(sched.waiting), len(sched.running) + len(sched.prefilling)
        stats.live_rows = self.executor.live_rows
        out.stats = dataclasses.replace(stats)
        return out

    def _collect_beams(self, out: CoreOutput) -> None:
        with self._beam_lock:
            done, self._beam_done = self._beam_done, []
        for rid, ids, error in done:
            if ids is None:
                self.stats.failed += 1
                out.failed.append((rid, error or "generation failed"))
            else:
                out.beams.append((rid, ids))

    def _step(self, work: StepWork, out: CoreOutput) -> None:
        segments = self._segments(work, out)
        try:
            logits = self.executor.forward(segments)
        except Exception as exc:  # a failed forward fails only the requests it carried
            log.exception("forward failed for %d sequences", len(segments))
            message = f"generation failed: {type(exc).__name__}: {exc}"
            for seq in work.decode + [item.seq for item in work.prefill]:
                self._fail(seq, message, out)
            return
        to_sample, rows = self._record_prefill(work, logits, out)
        if to_sample:
            picks = self._sample(to_sample, logits_table(rows), out)
            self._record_tokens(picks, out)
        self.stats.steps += 1
        self.stats.last_batch_size = len(to_sample)

    def _segments(self, work: StepWork, out: CoreOutput) -> list[Segment]:
        """The step's batch for the executor: one decode token per running sequence, then prompt chunks."""
        now = time.monotonic()
        segments: list[Segment] = []
        work.decode.sort(key=_kv_row)  # consecutive rows share one attention call
        for seq in work.decode:
            segments.append(Segment(_kv_row(seq), [seq.generated[-1]], seq.cached_tokens))
        newcomers, self._newcomers = self._newcomers, []
        top_row = -1
        for seq in newcomers:
            top_row = max(top_row, _kv_row(seq))
            seq.admitted_at = now
            out.admitted.append((seq.key, max(0.0, now - seq.arrival), seq.reused_tokens))
        if newcomers:
            # Room for the newcomers' whole prompts now, in one allocation: growing the store copies
            # every layer's buffers, so once per step rather than once per newcomer or per chunk.
            self.executor.reserve(top_row + 1, max(len(s.prompt_ids) for s in newcomers) + 1)
        for item in work.prefill:
            seq = item.seq
            mode = "all" if seq.prompt_logprobs else ("last" if item.completes_prompt else "none")
            segments.append(
                Segment(_kv_row(seq), seq.prompt_ids[item.start : item.start + item.length], item.start, mode)
            )
        return segments

    def _admit(self, seq: Sequence) -> None:
        """A sequence leaving the queue takes its KV row: with the prefix cache on, the free row
        holding the longest prefix of its prompt, whose prefill then starts past that prefix
        (prompt log-probs need every prompt position's logits, so those prompts reuse nothing)."""
        if self.config.prefix_cache and not seq.prompt_logprobs:
            claim = self.executor.claim_row(seq.prompt_ids)
            seq.row, seq.prefilled = claim.row, claim.reused
        else:
            seq.row = self.executor.alloc_row()
        seq.reused_tokens = seq.prefilled
        if seq.reused_tokens:
            self.stats.prompt_tokens_cached += seq.reused_tokens
            self.stats.prefix_cache_hits += 1
        self._newcomers.append(seq)

    def _record_prefill(
        self, work: StepWork, logits: list[torch.Tensor | None], out: CoreOutput
    ) -> tuple[list[Sequence], list[torch.Tensor]]:
        """Prefill progress; the sequences to sample (decoders, prompts just completed) and their logits."""
        to_sample: list[Sequence] = list(work.decode)
        rows: list[torch.Tensor] = list(logits[: len(work.decode)])  # type: ignore[arg-type]
        for item, chunk in zip(work.prefill, logits[len(work.decode) :]):
            seq = item.seq
            seq.prefilled = item.start + item.length
            self.stats.prompt_tokens += item.length
            if seq.prompt_logprobs and chunk is not None:
                out.prompt_logprobs.append((seq.key, item.start, _prompt_logprobs(seq.prompt_ids, item.start, chunk)))
            if item.completes_prompt:
                assert chunk is not None, "a chunk that completes its prompt asks for logits"
                self.scheduler.promote(seq)
                to_sample.append(seq)
                rows.append(chunk[-1] if chunk.dim() == 2 else chunk)
        return to_sample, rows

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor, out: CoreOutput) -> list[tuple]:
        """One token per sequence: ``(seq, token id, logprob, top tokens or None)``."""
        try:
            sampled = sample_batch(logits, [s.sampler for s in seqs])
            tops: list = sampled.top_tokens or [None] * len(seqs)
            return list(zip(seqs, sampled.token_ids, sampled.logprobs, tops))
        except Exception:
            # One request's processors failed: sample row by row so only that request fails.
            picks = []
            for i, seq in enumerate(seqs):
                try:
                    one = sample_batch(logits[i : i + 1], [seq.sampler])
                    picks.append(
                        (seq, one.token_ids[0], one.logprobs[0], one.top_tokens[0] if one.top_tokens else None)
                    )
                except Exception as exc:
                    self._fail(seq, f"sampling failed: {type(exc).__name__}: {exc}", out)
            return picks

    def _record_tokens(self, picks: list[tuple], out: CoreOutput) -> None:
        """Append each token; finish the sequences that reached EOS or their budget."""
        eos = self.eos_ids
        tokens = out.tokens
        for seq, tok, logprob, top in picks:
            tok = int(tok)
            seq.sampler.append(tok)
            seq.generated.append(tok)
            self.stats.generated_tokens += 1
            reason: str | None = None
            if tok in eos and not seq.sampler.params.ignore_eos:
                reason = FinishReason.EOS_TOKEN.value
            elif len(seq.generated) >= seq.max_new_tokens:
                reason = FinishReason.LENGTH.value
            tokens.append((seq.key, tok, float(logprob), _plain_top(top), reason))
            if reason is not None:
                self._seqs.pop(seq.key, None)
                self._finish(seq)

    def _finish(self, seq: Sequence, *, keep_kv: bool = True) -> None:
        """Free its row; with the prefix cache on the row keeps its KV (and the ids it holds) for a
        later prompt that shares them, unless ``keep_kv`` is False (a failed step may have left it
        half written)."""
        self.scheduler.remove(seq)
        if seq.row is not None:
            keep = keep_kv and self.config.prefix_cache
            self.executor.free_row(seq.row, seq.kv_token_ids() if keep else None)
            seq.row = None
        seq.status = Status.FINISHED

    def _fail(self, seq: Sequence, message: str, out: CoreOutput) -> None:
        self._seqs.pop(seq.key, None)
        self._finish(seq, keep_kv=False)
        self.stats.failed += 1
        out.failed.append((seq.key, message))

    def release_all(self) -> None:
        """Free every sequence's row (shutting down: the front end has failed their requests)."""
        for seq in list(self._seqs.values()):
            self._finish(seq)
        self._seqs.clear()

    def close(self) -> None:
        self._beam_pool.shutdown(wait=False, cancel_futures=True)


class CoreLoop:
    """Runs a core until told to stop: wait for input or work, apply the input, step, emit the output.

    ``submit`` may be called from any thread; ``emit`` is called from the loop's thread only.
    """

    def __init__(self, core: EngineCore, emit: Callable[[CoreOutput], None]) -> None:
        self.core = core
        self.emit = emit
        self._inbox: list[CoreInput] = []
        self._cv = threading.Condition()
        core.wake = self._wake

    def submit(self, message: CoreInput) -> None:
        with self._cv:
            self._inbox.append(message)
            self._cv.notify()

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify()

    def run(self) -> None:
        torch.set_grad_enabled(False)
        core = self.core
        try:
            while True:
                with self._cv:
                    while not self._inbox and not core.has_work():
                        self._cv.wait()
                    incoming, self._inbox = self._inbox, []
                for message in incoming:
                    core.apply(message)
                if any(message.shutdown for message in incoming):
                    core.release_all()
                    return
                out = core.step()
                if out is not None:
                    self.emit(out)
        finally:
            core.close()


def _kv_row(seq: Sequence) -> int:
    """The KV row of an admitted sequence."""
    assert seq.row is not None, "only admitted sequences hold a KV row"
    return seq.row


def logits_table(rows: list[torch.Tensor]) -> torch.Tensor:
    """The rows to sample as one ``[B, V]`` tensor: a view when they already lie one after another
    in one buffer (every decode step of the llama.cpp executor, whose rows are views of
    llama.cpp's output table), else a stacked copy. ``torch.stack`` of one 49k-entry row took
    4.7 ms a step on a loaded machine (a parallel copy waits for the busy core's turn)."""
    first = rows[0]
    if first.dim() != 1 or first.stride(0) != 1:
        return torch.stack(rows)
    width, size, base = first.shape[0], first.element_size(), first.data_ptr()
    storage = first.untyped_storage().data_ptr()
    for k, row in enumerate(rows):
        if (
            row.data_ptr() != base + k * width * size
            or row.shape != first.shape
            or row.dtype != first.dtype
            or row.stride(0) != 1
            or row.untyped_storage().data_ptr() != storage
        ):
            return torch.stack(rows)
    return first.as_strided((len(rows), width), (width, 1))


def _plain_top(top: object) -> list[tuple[int, float]] | None:
    """Top picks as plain ``(id, logprob)`` tuples (they cross the process boundary)."""
    if top is None:
        return None
    return [(int(t), float(lp)) for t, lp in top]  # type: ignore[attr-defined]


def _prompt_logprobs(prompt_ids: list[int], start: int, logits: torch.Tensor) -> list[float]:
    """Log-probabilities of prompt tokens ``start + 1 ...`` from a chunk's logits ``[n, V]``."""
    n = min(logits.shape[0], len(prompt_ids) - start - 1)
    if n <= 0:
        return []
    logprobs = torch.log_softmax(logits[:n].float(), dim=-1)
    targets = torch.tensor(prompt_ids[start + 1 : start + 1 + n], dtype=torch.long, device=logprobs.device)
    return logprobs.gather(1, targets[:, None]).squeeze(1).tolist()
