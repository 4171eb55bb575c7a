"""The asyncio-facing engine: submit a request, get its tokens as they are made.

The model runs in one dedicated thread whose step reads ``schedule -> forward -> sample -> process
outputs``: the scheduler picks the work (scheduler.py), the executor runs one packed forward
(executor.py), the sampler picks each request's token (sampling.py) and the output processor turns
the tokens into the client's events and decides which requests are finished (output.py). The event
loop never blocks on it: long prompts are tokenized in a small thread pool, and events cross threads
once per step per request batch through ``loop.call_soon_threadsafe``. Cancellation lives in one
place: when the consumer of ``generate()`` stops iterating (client gone, task cancelled), the
generator's ``finally`` marks the request aborted and the engine thread frees its row before the
next step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from collections.abc import Sequence as Seq
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from streamhost.engine.beam import beam_search
from streamhost.engine.config import EngineConfig, LimitSettings
from streamhost.engine.errors import EngineNotReadyError, GenerationError, OverloadedError, ValidationError
from streamhost.engine.executor import dtype_name
from streamhost.engine.executor_api import Executor
from streamhost.engine.executors.llamacpp import LlamaCppExecutor
from streamhost.engine.kv_cache import Segment
from streamhost.engine.output import OutputProcessor, RequestOutput, gather_result
from streamhost.engine.sampling import RequestSampler, sample_batch
from streamhost.engine.scheduler import Scheduler, StepWork
from streamhost.engine.sequence import Sequence, Status
from streamhost.engine.types import FinishReason, GenerationParameters, GenerationResult, TokenEvent
from streamhost.engine.validation import ValidatedRequest, validate_request

__all__ = ["Engine", "EngineConfig", "EngineStats", "LimitSettings"]

log = logging.getLogger(__name__)

# Prompt tokens per step on a CPU. Measured with bench/serve.py's mixed prompts at 16 streams
# (a burst of 15 prompts, ~2,700 tokens): 512 gave TTFT p50 1.04 s / max 2.94 s, 1024 gave
# 1.10 / 2.59 s, one whole-burst step (TGI's way) 2.57 / 2.83 s. Per token a 1024-token step is
# ~8% cheaper than a 512-token one (the linear layers) and it pays the running streams' decode
# work half as often; a step of it takes about a second on 2 cores.
CPU_PREFILL_TOKENS_PER_STEP = 1024
GPU_PREFILL_TOKENS_PER_STEP = 2048  # not measured here (no GPU was lent); vLLM's chunked-prefill default

EventSink = Callable[[list], None]


@dataclass
class EngineStats:
    """Live counters for /metrics; read from any thread (plain ints, updated by the engine thread)."""

    waiting: int = 0
    running: int = 0
    steps: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    aborted: int = 0
    failed: int = 0
    finished: dict = field(default_factory=dict)
    last_batch_size: int = 0


@dataclass(eq=False)
class _Client:
    """Where a sequence's output goes: its output state and the sink that hands events to its queue."""

    output: RequestOutput
    sink: EventSink


class Engine:
    """A continuous-batching text-generation engine over one model."""

    def __init__(self, executor: Executor, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.executor = executor
        self.tokenizer = executor.tokenizer
        self.limits = self.config.limits or self.config.limit_settings.resolve(executor.max_positions)
        chunk = self.config.prefill_chunk or (
            GPU_PREFILL_TOKENS_PER_STEP if executor.device.type == "cuda" else CPU_PREFILL_TOKENS_PER_STEP
        )
        self.scheduler = Scheduler(self.limits, prefill_chunk=chunk)
        executor.configure(self.limits, self.scheduler.prefill_chunk)
        self.output = OutputProcessor(self.tokenizer, executor.eos_token_ids())
        self.stats = EngineStats()
        self.model_id = self.config.model_id or str(executor.model_path)
        self._inbox: list[tuple[Sequence, _Client]] = []
        self._clients: dict[Sequence, _Client] = {}  # engine thread only
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._accepting = False
        self._in_flight = 0
        self._ids = itertools.count()
        self._beam_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamhost-beam")
        self._tokenize_pool = ThreadPoolExecutor(
            max_workers=max(1, self.config.tokenizer_workers), thread_name_prefix="streamhost-tokenize"
        )
        self._by_id: dict[str, Sequence] = {}

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def load(cls, model: str, config: EngineConfig | None = None) -> Engine:
        """Resolve ``model`` (``smollm2``, a folder, .gguf, model.tar.gz or hub id) and load it."""
        from streamhost.engine.executors import load_executor

        config = config or EngineConfig()
        if (config.tensor_parallel_degree or 1) > 1:
            log.warning(
                "tensor parallel degree %s requested: this executor runs the model on one device",
                config.tensor_parallel_degree,
            )
        executor = load_executor(str(model), config)
        if config.model_id is None:
            config = replace(config, model_id=str(model))
        return cls(executor, config)

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="streamhost-engine", daemon=True)
            self._thread.start()
        self._accepting = True

    @property
    def ready(self) -> bool:
        return self._accepting and self._thread is not None and self._thread.is_alive()

    def stop_accepting(self) -> None:
        """Refuse new requests (draining); in-flight ones continue."""
        self._accepting = False

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def stop(self) -> None:
        """Stop the engine thread; requests still in flight end with an error event."""
        self._accepting = False
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        self._beam_pool.shutdown(wait=False, cancel_futures=True)
        # Tokenizations already queued finish (they are short) and their requests are refused below.
        self._tokenize_pool.shutdown(wait=False)

    # -- public API ----------------------------------------------------------------------------
    @property
    def chat_template(self) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    def info(self) -> dict:
        return {
            "model_id": self.model_id,
            "model_path": str(self.executor.model_path),
            "executor": self.executor.name,
            "dtype": dtype_name(self.executor.dtype),
            "device": self.executor.device.type,
            "max_positions": self.executor.max_positions,
            "prefill_chunk": self.scheduler.prefill_chunk,
            "limits": dataclasses.asdict(self.limits),
            **({"llamacpp": self.executor.describe()} if isinstance(self.executor, LlamaCppExecutor) else {}),
        }

    def tokenize(self, text: str) -> list[int]:
        """Prompt ids (blocking: long prompts take a while; ``prepare`` calls it in a worker thread for those)."""
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    async def prepare(self, prompt: str | Seq[int], params: GenerationParameters, *, stream: bool) -> ValidatedRequest:
        """Tokenize (long prompts in the tokenizer pool, so open streams keep flowing) and validate (TGI's rules).

        Raises ValidationError with the limit and what was asked.
        """
        if isinstance(prompt, str) and len(prompt) > self.config.inline_tokenize_chars:
            loop = asyncio.get_running_loop()
            ids = await loop.run_in_executor(self._tokenize_pool, self.tokenize, prompt)
        else:  # a short prompt costs the loop less than the hop to a worker (config.py)
            ids = self._prompt_ids(prompt)
        request = validate_request(ids, params, self.limits, stream=stream)
        if (request.params.num_beams or 1) > 1 and not self.executor.supports_beam_search:
            raise ValidationError(
                f"`num_beams` > 1 is not supported by the {self.executor.name} executor: "
                "use sampling or greedy decoding, or serve with --executor torch"
            )
        return request

    def _prompt_ids(self, prompt: str | Seq[int]) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise ValidationError("`inputs` cannot be empty")
            return self.tokenize(prompt)
        return [int(t) for t in prompt]

    def _check_capacity(self) -> None:
        if not self.ready:
            raise EngineNotReadyError("the model is not ready (loading or draining)")
        if self._in_flight >= self.limits.max_concurrent_requests:
            raise OverloadedError()

    async def generate(
        self,
        prompt: str | Seq[int],
        params: GenerationParameters | None = None,
        request_id: str | None = None,
        *,
        stream: bool = True,
    ) -> AsyncGenerator[TokenEvent, None]:
        """Yield one TokenEvent per generated token; the last one carries generated_text and details.

        Raises OverloadedError (before validation, as TGI), ValidationError, or GenerationError.
        Stopping the iteration early aborts the request and frees its batch slot.
        """
        params = params or GenerationParameters()
        self._check_capacity()
        self._in_flight += 1  # counted from the start: a request being tokenized is in flight
        seq: Sequence | None = None
        finished = False
        try:
            request = await self.prepare(prompt, params, stream=stream)
            if (request.params.num_beams or 1) > 1:
                async for event in self._beam_events(request, request_id):
                    yield event
                return
            if self._stopping:  # stopped while this prompt was being tokenized: nobody would answer
                raise EngineNotReadyError("the engine is shutting down")
            queue: asyncio.Queue = asyncio.Queue()
            seq, client = self._new_request(request, request_id, queue)
            with self._cv:
                self._inbox.append((seq, client))
                self._cv.notify()
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                if item.details is not None:
                    finished = True
                    yield item
                    return
                yield item
        finally:
            self._in_flight -= 1
            if seq is not None:
                self._by_id.pop(seq.request_id, None)
                if not finished:
                    seq.aborted = True
                    with self._cv:
                        self._cv.notify()

    async def generate_full(
        self, prompt: str | Seq[int], params: GenerationParameters | None = None, request_id: str | None = None
    ) -> GenerationResult:
        """A whole answer (non-streaming); also the path for beam search."""
        events = self.generate(prompt, params, request_id, stream=False)
        try:
            return await gather_result(events)
        finally:
            await events.aclose()

    def abort(self, request_id: str) -> bool:
        """Abort a request by id; its slot and KV memory are freed before the next step."""
        seq = self._by_id.get(request_id)
        if seq is None:
            return False
        seq.aborted = True
        with self._cv:
            self._cv.notify()
        return True

    # -- request setup ---------------------------------------------------------------------------
    def _new_request(
        self, request: ValidatedRequest, request_id: str | None, queue: asyncio.Queue
    ) -> tuple[Sequence, _Client]:
        params = request.params
        loop = self._loop

        def sink(items: list) -> None:
            loop.call_soon_threadsafe(_put_all, queue, items)

        rid = request_id or f"req-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        sampler = RequestSampler(params, request.input_ids, device="cpu")
        seq = Sequence(
            request_id=rid,
            prompt_ids=list(request.input_ids),
            max_new_tokens=request.max_new_tokens,
            sampler=sampler,
            prompt_logprobs=bool(params.decoder_input_details),
        )
        output = self.output.new_request(rid, request.input_ids, params, request.max_new_tokens, seed=sampler.seed)
        self._by_id[rid] = seq
        return seq, _Client(output, sink)

    async def _beam_events(self, request: ValidatedRequest, request_id: str | None) -> AsyncIterator[TokenEvent]:
        """Beam search runs beside the batch (its own thread) and returns all tokens at once."""
        loop = asyncio.get_running_loop()
        ids = await loop.run_in_executor(self._beam_pool, beam_search, self.executor, request, self.output.eos_ids)
        state = self.output.new_request(request_id or "beam", request.input_ids, request.params, request.max_new_tokens)
        events = self.output.process(state, ids, [0.0] * len(ids))
        final = self.output.finish(state, FinishReason.LENGTH, events[-1] if events else None)
        if final is not None:
            events.append(final)
        for event in events:
            yield event

    # -- the engine thread -----------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        sched = self.scheduler
        while True:
            with self._cv:
                while not self._inbox and not sched.has_work() and not self._stopping:
                    self._cv.wait()
                incoming, self._inbox = self._inbox, []
                stopping = self._stopping
            for seq, client in incoming:
                self._clients[seq] = client
                sched.add(seq)
            if stopping:
                self._fail_all(EngineNotReadyError("the engine is shutting down"))
                return
            self._reap_aborted()
            if not sched.has_work() and self.executor.live_rows == 0:
                # Idle: keep a modest cache for the next request (reallocating costs its TTFT),
                # give a large one back.
                self.executor.release_idle_memory(self.config.idle_kv_bytes)
                continue
            work = sched.schedule()
            self.stats.waiting, self.stats.running = len(sched.waiting), len(sched.running) + len(sched.prefilling)
            if work:
                self._step(work)

    def _step(self, work: StepWork) -> None:
        """One step: schedule (done by the caller) -> forward -> sample -> process outputs."""
        outbox: dict[EventSink, list] = {}
        segments = self._segments(work)
        try:
            logits = self.executor.forward(segments)
        except Exception as exc:  # a failed forward fails only the requests it carried
            log.exception("forward failed for %d sequences", len(segments))
            error = GenerationError(f"generation failed: {type(exc).__name__}: {exc}")
            for seq in work.decode + [item.seq for item in work.prefill]:
                self._fail(seq, error, outbox)
            _deliver(outbox)
            return
        to_sample, rows = self._record_prefill(work, logits)
        if to_sample:
            picks = self._sample(to_sample, torch.stack(rows), outbox)
            self._process_outputs(picks, outbox)
        self.stats.steps += 1
        self.stats.last_batch_size = len(to_sample)
        _deliver(outbox)

    def _segments(self, work: StepWork) -> list[Segment]:
        """The step's batch for the executor: one decode token per running sequence, then prompt chunks."""
        now = time.monotonic()
        segments: list[Segment] = []
        work.decode.sort(key=_kv_row)  # consecutive rows share one attention call
        for seq in work.decode:
            segments.append(Segment(_kv_row(seq), [seq.generated[-1]], seq.cached_tokens))
        newcomers = [item.seq for item in work.prefill if item.seq.row is None]
        top_row = -1
        for seq in newcomers:
            seq.row = row = self.executor.alloc_row()
            top_row = max(top_row, row)
            seq.admitted_at = now
            self._clients[seq].output.queue_time = max(0.0, now - seq.arrival)
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

    def _record_prefill(
        self, work: StepWork, logits: list[torch.Tensor | None]
    ) -> tuple[list[Sequence], list[torch.Tensor]]:
        """Prefill progress; the sequences to sample (decoders, prompts just completed) and their logits."""
        to_sample: list[Sequence] = list(work.decode)
        rows: list[torch.Tensor] = list(logits[: len(work.decode)])  # type: ignore[arg-type]
        for item, out in zip(work.prefill, logits[len(work.decode) :]):
            seq = item.seq
            seq.prefilled = item.start + item.length
            self.stats.prompt_tokens += item.length
            if seq.prompt_logprobs and out is not None:
                values = _prompt_logprobs(seq.prompt_ids, item.start, out)
                self.output.add_prompt_logprobs(self._clients[seq].output, item.start, values)
            if item.completes_prompt:
                assert out is not None, "a chunk that completes its prompt asks for logits"
                self.scheduler.promote(seq)
                to_sample.append(seq)
                rows.append(out[-1] if out.dim() == 2 else out)
        return to_sample, rows

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor, outbox: dict) -> list[tuple]:
        """One token per sequence: ``(seq, token id, logprob, top tokens or None)``."""
        try:
            out = sample_batch(logits, [s.sampler for s in seqs])
            tops: list[Any] = out.top_tokens or [None] * len(seqs)
            return list(zip(seqs, out.token_ids, out.logprobs, tops))
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
                    self._fail(seq, GenerationError(f"sampling failed: {type(exc).__name__}: {exc}"), outbox)
            return picks

    def _process_outputs(self, picks: list[tuple], outbox: dict) -> None:
        """Hand each new token to the output processor; free the sequences it finished."""
        process = self.output.process
        finished = self.stats.finished
        for seq, tok, logprob, top in picks:
            if seq.aborted:
                continue
            seq.sampler.append(tok)
            seq.generated.append(tok)
            self.stats.generated_tokens += 1
            client = self._clients[seq]
            events = process(client.output, (tok,), (logprob,), (top,))
            outbox.setdefault(client.sink, []).extend(events)
            reason = client.output.finish_reason
            if reason is not None:
                finished[reason.value] = finished.get(reason.value, 0) + 1
                self._finish(seq)

    def _reap_aborted(self) -> None:
        sched = self.scheduler
        for group in (list(sched.waiting), list(sched.prefilling), list(sched.running)):
            for seq in group:
                if seq.aborted:
                    self._finish(seq)
                    self.stats.aborted += 1

    def _finish(self, seq: Sequence) -> None:
        self.scheduler.remove(seq)
        if seq.row is not None:
            self.executor.free_row(seq.row)
            seq.row = None
        seq.status = Status.FINISHED
        self._clients.pop(seq, None)

    def _fail(self, seq: Sequence, error: BaseException, outbox: dict) -> None:
        client = self._clients.get(seq)
        self._finish(seq)
        self.stats.failed += 1
        if client is not None:
            outbox.setdefault(client.sink, []).append(error)

    def _fail_all(self, error: BaseException) -> None:
        outbox: dict = {}
        sched = self.scheduler
        for seq in list(sched.waiting) + list(sched.prefilling) + list(sched.running):
            self._fail(seq, error, outbox)
        _deliver(outbox)


def _kv_row(seq: Sequence) -> int:
    """The KV row of an admitted sequence."""
    assert seq.row is not None, "only admitted sequences hold a KV row"
    return seq.row


def _prompt_logprobs(prompt_ids: list[int], start: int, logits: torch.Tensor) -> list[float]:
    """Log-probabilities of prompt tokens ``start + 1 ...`` from a chunk's logits ``[n, V]``."""
    n = min(logits.shape[0], len(prompt_ids) - start - 1)
    if n <= 0:
        return []
    logprobs = torch.log_softmax(logits[:n].float(), dim=-1)
    targets = torch.tensor(prompt_ids[start + 1 : start + 1 + n], dtype=torch.long, device=logprobs.device)
    return logprobs.gather(1, targets[:, None]).squeeze(1).tolist()


def _put_all(queue: asyncio.Queue, items: list) -> None:
    for item in items:
        queue.put_nowait(item)


def _deliver(outbox: dict) -> None:
    for sink, items in outbox.items():
        sink(items)
