"""The asyncio-facing engine: submit a request, get its tokens as they are made.

The model runs in one dedicated thread that loops ``schedule -> forward -> sample -> emit``; the
event loop never blocks on it. Events cross threads once per step per request batch through
``loop.call_soon_threadsafe``. Cancellation lives in one place: when the consumer of
``generate()`` stops iterating (client gone, task cancelled), the generator's ``finally`` marks
the request aborted and the engine thread frees its row before the next step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence as Seq
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import torch

from streamhost.engine.beam import beam_search
from streamhost.engine.detokenizer import IncrementalDetokenizer, token_text
from streamhost.engine.errors import EngineNotReadyError, GenerationError, OverloadedError, ValidationError
from streamhost.engine.executor import dtype_name
from streamhost.engine.executors.base import Executor
from streamhost.engine.kv_cache import Segment
from streamhost.engine.limits import EngineLimits
from streamhost.engine.sampling import RequestSampler, sample_batch
from streamhost.engine.scheduler import Scheduler, StepWork
from streamhost.engine.sequence import Sequence, Status
from streamhost.engine.stops import StopSequenceMatcher
from streamhost.engine.types import (
    FinishReason,
    GenerationDetails,
    GenerationParameters,
    GenerationResult,
    PrefillToken,
    TokenEvent,
    TopToken,
)
from streamhost.engine.validation import ValidatedRequest, validate_request

log = logging.getLogger(__name__)

# Prompt tokens per step on a CPU. Measured with bench/serve.py's mixed prompts at 16 streams
# (a burst of 15 prompts, ~2,700 tokens): 512 gave TTFT p50 1.04 s / max 2.94 s, 1024 gave
# 1.10 / 2.59 s, one whole-burst step (TGI's way) 2.57 / 2.83 s. Per token a 1024-token step is
# ~8% cheaper than a 512-token one (the linear layers) and it pays the running streams' decode
# work half as often; a step of it takes about a second on 2 cores.
CPU_PREFILL_TOKENS_PER_STEP = 1024
GPU_PREFILL_TOKENS_PER_STEP = 2048  # not measured here (no GPU was lent); vLLM's chunked-prefill default


@dataclass
class EngineConfig:
    """How to run the model; ``None`` fields are chosen from the hardware and environment."""

    dtype: str | None = None  # bf16 | fp16 | fp32 | auto
    device: str | None = None  # cpu | cuda | cuda:N | auto
    trust_remote_code: bool = False
    revision: str | None = None
    limits: EngineLimits | None = None
    prefill_chunk: int | None = None  # prompt tokens per step, all sequences together (CPU 1024, GPU 2048)
    idle_kv_bytes: int = 512 * 1024**2  # KV cache kept allocated while idle; a larger one is released
    model_id: str | None = None  # the name reported by /info (defaults to the reference given to load)
    executor: str | None = None  # torch | llamacpp | None (auto: see engine/executors/__init__.py)
    quantize: str | None = None  # HF_MODEL_QUANTIZE / OPTION_QUANTIZE: a llama.cpp type (q8_0, q4_k_m, ...)
    threads: int | None = None  # llama.cpp compute threads (default: every core this process may use)


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


class Engine:
    """A continuous-batching text-generation engine over one model."""

    def __init__(self, executor: Executor, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.executor = executor
        self.tokenizer = executor.tokenizer
        self.limits = self.config.limits or EngineLimits.from_env(model_max_positions=executor.max_positions)
        chunk = self.config.prefill_chunk or (
            GPU_PREFILL_TOKENS_PER_STEP if executor.device.type == "cuda" else CPU_PREFILL_TOKENS_PER_STEP)
        self.scheduler = Scheduler(self.limits, prefill_chunk=chunk)
        executor.configure(self.limits, self.scheduler.prefill_chunk)
        self.stats = EngineStats()
        self.model_id = self.config.model_id or str(executor.model_path)
        self._eos_ids = frozenset(executor.eos_token_ids())
        self._special_ids = frozenset(getattr(self.tokenizer, "all_special_ids", []) or [])
        self._inbox: list[Sequence] = []
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._accepting = False
        self._in_flight = 0
        self._ids = itertools.count()
        self._beam_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamhost-beam")
        self._by_id: dict[str, Sequence] = {}

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def load(cls, model: str, config: EngineConfig | None = None) -> "Engine":
        """Resolve ``model`` (``smollm2``, a folder, .gguf, model.tar.gz or hub id) and load it."""
        from streamhost.engine.executors import load_executor
        from streamhost.engine.limits import ExecutionOptions

        config = config or EngineConfig()
        options = ExecutionOptions.from_env()
        if (options.tensor_parallel_degree or 1) > 1:
            log.warning("tensor parallel degree %s requested: this executor runs the model on one device",
                        options.tensor_parallel_degree)
        executor = load_executor(str(model), config, dtype=config.dtype or options.dtype)
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
            **({"llamacpp": self.executor.describe()} if self.executor.name == "llamacpp" else {}),
        }

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def prepare(self, prompt: str | Seq[int], params: GenerationParameters, *, stream: bool) -> ValidatedRequest:
        """Tokenize and validate (TGI's rules); raises ValidationError with the limit and what was asked."""
        if isinstance(prompt, str):
            if not prompt:
                raise ValidationError("`inputs` cannot be empty")
            ids = self.tokenize(prompt)
        else:
            ids = [int(t) for t in prompt]
        request = validate_request(ids, params, self.limits, stream=stream)
        if (request.params.num_beams or 1) > 1 and not self.executor.supports_beam_search:
            raise ValidationError(f"`num_beams` > 1 is not supported by the {self.executor.name} executor: "
                                  "use sampling or greedy decoding, or serve with --executor torch")
        return request

    def _check_capacity(self) -> None:
        if not self.ready:
            raise EngineNotReadyError("the model is not ready (loading or draining)")
        if self._in_flight >= self.limits.max_concurrent_requests:
            raise OverloadedError()

    async def generate(self, prompt: str | Seq[int], params: GenerationParameters | None = None,
                       request_id: str | None = None, *, stream: bool = True) -> AsyncIterator[TokenEvent]:
        """Yield one TokenEvent per generated token; the last one carries generated_text and details.

        Raises OverloadedError (before validation, as TGI), ValidationError, or GenerationError.
        Stopping the iteration early aborts the request and frees its batch slot.
        """
        params = params or GenerationParameters()
        self._check_capacity()
        request = self.prepare(prompt, params, stream=stream)
        if (request.params.num_beams or 1) > 1:
            async for event in self._beam_events(request):
                yield event
            return
        queue: asyncio.Queue = asyncio.Queue()
        seq = self._new_sequence(request, request_id, queue)
        self._in_flight += 1
        finished = False
        try:
            with self._cv:
                self._inbox.append(seq)
                self._cv.notify()
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
                if item.details is not None:
                    finished = True
                    return
        finally:
            self._in_flight -= 1
            self._by_id.pop(seq.request_id, None)
            if not finished:
                seq.aborted = True
                with self._cv:
                    self._cv.notify()

    async def generate_full(self, prompt: str | Seq[int], params: GenerationParameters | None = None,
                            request_id: str | None = None) -> GenerationResult:
        """A whole answer (non-streaming); also the path for beam search."""
        started = time.monotonic()
        events: list[TokenEvent] = []
        async for event in self.generate(prompt, params, request_id, stream=False):
            events.append(event)
        final = events[-1]
        assert final.details is not None and final.generated_text is not None
        total = time.monotonic() - started
        return GenerationResult(final.generated_text, events, final.details, queue_time=final.details.queue_time,
                                inference_time=max(0.0, total - final.details.queue_time))

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
    def _new_sequence(self, request: ValidatedRequest, request_id: str | None, queue: asyncio.Queue) -> Sequence:
        params = request.params
        loop = self._loop

        def sink(items: list) -> None:
            loop.call_soon_threadsafe(_put_all, queue, items)

        seq = Sequence(
            request_id=request_id or f"req-{next(self._ids)}-{uuid.uuid4().hex[:8]}",
            prompt_ids=list(request.input_ids),
            params=params,
            max_new_tokens=request.max_new_tokens,
            sampler=RequestSampler(params, request.input_ids, device="cpu"),
            detokenizer=IncrementalDetokenizer(self.tokenizer, request.input_ids, skip_special_tokens=True),
            stops=StopSequenceMatcher(params.stop) if params.stop else None,
            sink=sink,
        )
        self._by_id[seq.request_id] = seq
        return seq

    async def _beam_events(self, request: ValidatedRequest) -> AsyncIterator[TokenEvent]:
        """Beam search runs beside the batch (its own thread) and returns all tokens at once."""
        self._in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            ids = await loop.run_in_executor(self._beam_pool, beam_search, self.executor, request, self._eos_ids)
        finally:
            self._in_flight -= 1
        detok = IncrementalDetokenizer(self.tokenizer, request.input_ids, skip_special_tokens=True)
        stops = StopSequenceMatcher(request.params.stop) if request.params.stop else None
        events: list[TokenEvent] = []
        finish = FinishReason.LENGTH
        texts: list[str] = []
        for index, tok in enumerate(ids):
            piece = detok.add(tok)
            stopped = False
            if stops is not None:
                piece, stopped = stops.push(piece)
            special = tok in self._special_ids
            events.append(TokenEvent(index, tok, token_text(self.tokenizer, tok) if special else piece, 0.0, special))
            if not special:
                texts.append(piece)
            if stopped:
                finish = FinishReason.STOP_SEQUENCE
                break
            if tok in self._eos_ids and not request.params.ignore_eos:
                finish = FinishReason.EOS_TOKEN
                break
        if finish is not FinishReason.STOP_SEQUENCE:
            tail = detok.flush()
            if stops is not None:
                tail, _ = stops.push(tail)
                tail += stops.flush()
            if tail and events:
                events[-1].text += tail if not events[-1].special else ""
                texts.append(tail)
        generated = "".join(texts)
        final = events[-1] if events else TokenEvent(0, 0, "", 0.0, True)
        final.generated_text = self._full_text(request.input_ids, generated, request.params)
        final.details = GenerationDetails(finish, len(events), len(request.input_ids), None)
        for event in events:
            yield event

    def _full_text(self, prompt_ids: list[int], generated: str, params: GenerationParameters) -> str:
        if not params.return_full_text:
            return generated
        return self.tokenizer.decode(prompt_ids, skip_special_tokens=False) + generated

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
            for seq in incoming:
                sched.add(seq)
            if stopping:
                self._fail_all(EngineNotReadyError("the engine is shutting down"))
                return
            self._reap_aborted()
            if not sched.has_work() and self.executor.store.live_rows == 0:
                # Idle: keep a modest cache for the next request (reallocating costs its TTFT),
                # give a large one back.
                if self.executor.store.nbytes() > self.config.idle_kv_bytes:
                    self.executor.store.reset()
                continue
            work = sched.schedule()
            self.stats.waiting, self.stats.running = len(sched.waiting), len(sched.running) + len(sched.prefilling)
            if work:
                self._step(work)

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

    def _fail(self, seq: Sequence, error: BaseException, outbox: dict) -> None:
        self._finish(seq)
        self.stats.failed += 1
        outbox.setdefault(seq.sink, []).append(error)

    def _fail_all(self, error: BaseException) -> None:
        outbox: dict = {}
        sched = self.scheduler
        for seq in list(sched.waiting) + list(sched.prefilling) + list(sched.running):
            self._fail(seq, error, outbox)
        _deliver(outbox)

    def _step(self, work: StepWork) -> None:
        now = time.monotonic()
        segments: list[Segment] = []
        work.decode.sort(key=lambda seq: seq.row)  # consecutive rows share one attention call
        for seq in work.decode:
            segments.append(Segment(seq.row, [seq.generated[-1]], seq.cached_tokens))
        newcomers = [item.seq for item in work.prefill if item.seq.row is None]
        for seq in newcomers:
            seq.row = self.executor.alloc_row()
            seq.admitted_at = now
        if newcomers:
            # Room for the newcomers' whole prompts now, in one allocation: growing the store copies
            # every layer's buffers, so once per step rather than once per newcomer or per chunk.
            self.executor.store.reserve(max(s.row for s in newcomers) + 1,
                                        max(len(s.prompt_ids) for s in newcomers) + 1)
        for item in work.prefill:
            seq = item.seq
            wants_all = seq.wants_prefill_details
            mode = "all" if wants_all else ("last" if item.completes_prompt else "none")
            segments.append(Segment(seq.row, seq.prompt_ids[item.start:item.start + item.length], item.start, mode))
        outbox: dict = {}
        try:
            logits = self.executor.forward(segments)
        except Exception as exc:  # a failed forward fails only the requests it carried
            log.exception("forward failed for %d sequences", len(segments))
            error = GenerationError(f"generation failed: {type(exc).__name__}: {exc}")
            for seq in work.decode + [item.seq for item in work.prefill]:
                self._fail(seq, error, outbox)
            _deliver(outbox)
            return
        to_sample: list[Sequence] = list(work.decode)
        rows: list[torch.Tensor] = list(logits[: len(work.decode)])
        for item, out in zip(work.prefill, logits[len(work.decode):]):
            seq = item.seq
            seq.prefilled = item.start + item.length
            self.stats.prompt_tokens += item.length
            if seq.wants_prefill_details and out is not None:
                self._record_prefill_logprobs(seq, item.start, out)
            if item.completes_prompt:
                self.scheduler.promote(seq)
                to_sample.append(seq)
                rows.append(out[-1] if out.dim() == 2 else out)
        if to_sample:
            self._sample_and_emit(to_sample, torch.stack(rows), outbox)
        self.stats.steps += 1
        self.stats.last_batch_size = len(to_sample)
        _deliver(outbox)

    def _record_prefill_logprobs(self, seq: Sequence, start: int, logits: torch.Tensor) -> None:
        ids = seq.prompt_ids
        if start == 0:
            seq.prefill_tokens.append(PrefillToken(ids[0], token_text(self.tokenizer, ids[0]), None))
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        n = logits.shape[0]
        for i in range(n):
            target = start + i + 1
            if target >= len(ids):
                break
            tok = ids[target]
            seq.prefill_tokens.append(PrefillToken(tok, token_text(self.tokenizer, tok), float(logprobs[i, tok])))

    def _sample_and_emit(self, seqs: list[Sequence], logits: torch.Tensor, outbox: dict) -> None:
        try:
            out = sample_batch(logits, [s.sampler for s in seqs])
            picks = list(zip(seqs, out.token_ids, out.logprobs, out.top_tokens or [None] * len(seqs)))
        except Exception:
            # One request's processors failed: sample row by row so only that request fails.
            picks = []
            for i, seq in enumerate(seqs):
                try:
                    one = sample_batch(logits[i:i + 1], [seq.sampler])
                    picks.append((seq, one.token_ids[0], one.logprobs[0], (one.top_tokens or [None])[0]))
                except Exception as exc:
                    self._fail(seq, GenerationError(f"sampling failed: {type(exc).__name__}: {exc}"), outbox)
        now = time.monotonic()
        for seq, tok, logprob, top in picks:
            if seq.aborted:
                continue
            event = self._advance(seq, tok, logprob, top, now)
            outbox.setdefault(seq.sink, []).append(event)

    def _advance(self, seq: Sequence, tok: int, logprob: float, top, now: float) -> TokenEvent:
        """Record one token; decide whether the request is finished; build its event."""
        seq.sampler.append(tok)
        seq.generated.append(tok)
        self.stats.generated_tokens += 1
        if seq.first_token_at is None:
            seq.first_token_at = now
        special = tok in self._special_ids
        piece = seq.detokenizer.add(tok)
        stopped = False
        if seq.stops is not None and piece:
            piece, stopped = seq.stops.push(piece)
        finish: FinishReason | None = None
        if stopped:
            finish = FinishReason.STOP_SEQUENCE
        elif tok in self._eos_ids and not seq.params.ignore_eos:
            finish = FinishReason.EOS_TOKEN
        elif len(seq.generated) >= seq.max_new_tokens:
            finish = FinishReason.LENGTH
        if finish is not None and finish is not FinishReason.STOP_SEQUENCE:
            piece += self._drain_pending(seq)
        if special and not piece:
            text = token_text(self.tokenizer, tok)
        else:
            special = special and not piece  # held-back text released on EOS rides on its event
            text = piece
        if not special and text:
            seq.texts.append(text)
        top_tokens = None
        if top is not None:
            top_tokens = [TopToken(t, token_text(self.tokenizer, t), lp, t in self._special_ids) for t, lp in top]
        event = TokenEvent(len(seq.generated) - 1, tok, text, float(logprob), special, top_tokens)
        if finish is not None:
            generated = "".join(seq.texts)
            event.generated_text = self._full_text(seq.prompt_ids, generated, seq.params)
            event.details = GenerationDetails(
                finish_reason=finish, generated_tokens=len(seq.generated), input_length=seq.input_length,
                seed=seq.sampler.seed, prefill=seq.prefill_tokens,
                queue_time=max(0.0, (seq.admitted_at or seq.arrival) - seq.arrival),
            )
            self.stats.finished[finish.value] = self.stats.finished.get(finish.value, 0) + 1
            self._finish(seq)
        return event

    def _drain_pending(self, seq: Sequence) -> str:
        tail = seq.detokenizer.flush()
        if seq.stops is None:
            return tail
        held, stopped = seq.stops.push(tail) if tail else ("", False)
        return held if stopped else held + seq.stops.flush()


def _put_all(queue: asyncio.Queue, items: list) -> None:
    for item in items:
        queue.put_nowait(item)


def _deliver(outbox: dict) -> None:
    for sink, items in outbox.items():
        sink(items)
