"""The asyncio-facing engine (the front end): submit a request, get its tokens as they are made.

The engine core (engine/core.py: scheduler, KV cache, forward, sampler, beam search) runs in a
process of its own by default (engine/core_client.py, engine/core_proc.py), or in a thread of this
process with ``EngineConfig.engine_process=False``. This side keeps what vLLM v1 keeps in its API
server: tokenizing (long prompts in a small thread pool, so they do not stall open streams),
validation, and output processing (engine/output.py: detokenizer, stop strings, the events).

One message per step each way: the requests that arrived and the ones that went away since the
last message go in (gathered over one event-loop turn); each step's sampled tokens for every
sequence come out and are turned into events on the event loop. A stop string found here sends the
request back to the core as finished. Cancellation lives in one place: when the consumer of
``generate()`` stops iterating (client gone, task cancelled), the generator's ``finally`` sends
an abort and the core frees the row before its next step. If the core dies, every request in
flight ends with a GenerationError (its protocol's error event), ``ready`` turns false and
``on_core_exit`` tells the server, which exits so its supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import secrets
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from collections.abc import Sequence as Seq
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from streamhost.engine.config import EngineConfig, LimitSettings
from streamhost.engine.core_messages import CoreInput, CoreOutput, CoreRequest, CoreStats, ExecutorSummary
from streamhost.engine.errors import EngineNotReadyError, GenerationError, OverloadedError, ValidationError
from streamhost.engine.output import OutputProcessor, RequestOutput, gather_result
from streamhost.engine.prefix_cache import MIN_MATCH_TOKENS
from streamhost.engine.types import FinishReason, GenerationParameters, GenerationResult, TokenEvent
from streamhost.engine.validation import ValidatedRequest, validate_request

__all__ = ["Engine", "EngineConfig", "EngineStats", "LimitSettings"]

log = logging.getLogger(__name__)


@dataclass
class EngineStats(CoreStats):
    """Live counters for /metrics: the core's as of its last step, plus the finishes seen here."""

    finished: dict = field(default_factory=dict)


_CORE_STAT_FIELDS = tuple(f.name for f in dataclasses.fields(CoreStats))


@dataclass(frozen=True)
class _Device:
    type: str


@dataclass(eq=False)
class _Client:
    """Where a request's output goes: its output state and its consumer's queue."""

    output: RequestOutput
    queue: asyncio.Queue


class Engine:
    """A continuous-batching text-generation engine over one model."""

    def __init__(self, executor: Any = None, config: EngineConfig | None = None, *, core: Any = None) -> None:
        """``Engine(executor, config)`` runs the core in a thread here; :meth:`load` may start a process."""
        from streamhost.engine.core_client import InProcessCore

        self.config = config or EngineConfig()
        self._core = core if core is not None else InProcessCore(executor, self.config)
        info = self._core.info
        self.core_info = info
        self.executor = (
            executor if executor is not None else ExecutorSummary(info.executor_name, _Device(info.device_type))
        )
        self.tokenizer = info.tokenizer
        self.limits = info.limits
        self.output = OutputProcessor(self.tokenizer, info.eos_ids)
        self.stats = EngineStats()
        self.model_id = self.config.model_id or str(info.model_path)
        self.on_core_exit: Callable[[str], None] | None = None  # the server's "exit non-zero"
        self._clients: dict[int, _Client] = {}  # by core key (event loop only)
        self._by_id: dict[str, int] = {}  # request id -> core key, for abort()
        self._keys = itertools.count()
        self._ids = itertools.count()
        self._pending: CoreInput | None = None
        self._pending_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._started = False
        self._stopping = False
        self._accepting = False
        self._dead: str | None = None
        self._in_flight = 0
        self._local_failed = 0
        self._tokenize_pool = ThreadPoolExecutor(
            max_workers=max(1, self.config.tokenizer_workers), thread_name_prefix="streamhost-tokenize"
        )

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def load(cls, model: str, config: EngineConfig | None = None) -> Engine:
        """Resolve ``model`` (``smollm2``, a folder, .gguf, model.tar.gz or hub id) and load it.

        With ``config.engine_process`` (the default) the model loads in the engine-core process.
        """
        config = config or EngineConfig()
        if (config.tensor_parallel_degree or 1) > 1:
            log.warning(
                "tensor parallel degree %s requested: this executor runs the model on one device",
                config.tensor_parallel_degree,
            )
        if config.model_id is None:
            config = replace(config, model_id=str(model))
        if config.engine_process:
            from streamhost.engine.core_client import ProcessCore
            from streamhost.engine.core_placement import plan_placement

            level = logging.getLevelName(logging.getLogger("streamhost").getEffectiveLevel())
            core = ProcessCore(str(model), config, plan_placement(config.engine_cores), log_level=level)
            return cls(None, config, core=core)
        from streamhost.engine.executors import load_executor

        return cls(load_executor(str(model), config), config)

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if not self._started:
            loop = self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
            self._stopping = False

            def on_output(out: CoreOutput) -> None:
                loop.call_soon_threadsafe(self._on_output, out)

            def on_exit(why: str) -> None:
                loop.call_soon_threadsafe(self._on_core_exit, why)

            self._core.start(on_output, on_exit)
            self._started = True
        self._accepting = True

    @property
    def ready(self) -> bool:
        return self._accepting and self._started and self._dead is None and self._core.alive

    @property
    def scheduler(self) -> Any:
        """The core's scheduler when it runs in this process (tests, /metrics); None otherwise."""
        core = getattr(self._core, "core", None)
        return core.scheduler if core is not None else None

    @property
    def core_pid(self) -> int | None:
        """The engine-core process, when the core runs in one."""
        return getattr(self._core, "pid", None)

    def stop_accepting(self) -> None:
        """Refuse new requests (draining); in-flight ones continue."""
        self._accepting = False

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def stop(self) -> None:
        """Stop the core; requests still in flight end with an error event."""
        self._accepting = False
        self._stopping = True
        self._fail_all(EngineNotReadyError("the engine is shutting down"))
        if self._started:
            self._flush()
            await asyncio.to_thread(self._core.close)
            self._started = False
        # Tokenizations already queued finish (they are short) and their requests are refused.
        self._tokenize_pool.shutdown(wait=False)

    # -- public API ----------------------------------------------------------------------------
    @property
    def chat_template(self) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    def info(self) -> dict:
        info = self.core_info
        return {
            "model_id": self.model_id,
            "model_path": str(info.model_path),
            "executor": info.executor_name,
            "dtype": info.dtype,
            "device": info.device_type,
            "max_positions": info.max_positions,
            "prefill_chunk": info.prefill_chunk,
            "limits": dataclasses.asdict(self.limits),
            "prefix_cache": {"enabled": self.config.prefix_cache, "min_match_tokens": MIN_MATCH_TOKENS},
            **({info.executor_name: info.describe} if info.describe is not None else {}),
            "engine_core": {
                "process": info.pid is not None,
                "pid": info.pid,
                "cpus": info.cpus,
                "threads": info.threads,
            },
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
        if (request.params.num_beams or 1) > 1 and not self.core_info.supports_beam_search:
            raise ValidationError(
                f"`num_beams` > 1 is not supported by the {self.core_info.executor_name} executor: "
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
        key: int | None = None
        rid = ""
        try:
            request = await self.prepare(prompt, params, stream=stream)
            if self._stopping or self._dead is not None:  # stopped while this prompt was being tokenized
                raise EngineNotReadyError("the engine is shutting down")
            queue: asyncio.Queue = asyncio.Queue()
            rid = request_id or f"req-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
            key = self._submit(request, rid, queue)
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.details is not None:
                    return
        finally:
            self._in_flight -= 1
            if key is not None:
                if self._by_id.get(rid) == key:
                    del self._by_id[rid]
                if self._clients.pop(key, None) is not None:  # still running in the core
                    self._queue_input().aborted.append(key)

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
        """Abort a request by id; its slot and KV memory are freed before the core's next step."""
        key = self._by_id.pop(request_id, None)
        client = self._clients.pop(key, None) if key is not None else None
        if key is None or client is None:
            return False
        self._queue_input().aborted.append(key)
        client.queue.put_nowait(GenerationError("the request was aborted"))
        return True

    # -- to the core ---------------------------------------------------------------------------
    def _submit(self, request: ValidatedRequest, rid: str, queue: asyncio.Queue) -> int:
        params = request.params
        if params.do_sample and params.seed is None:  # drawn here, so the answer's details can report it
            params = replace(params, seed=secrets.randbits(64))
        seed = params.seed if params.do_sample else None
        key = next(self._keys)
        output = self.output.new_request(rid, request.input_ids, params, request.max_new_tokens, seed=seed)
        self._clients[key] = _Client(output, queue)
        self._by_id[rid] = key
        core_request = CoreRequest(
            request_id=key,
            prompt_ids=list(request.input_ids),
            max_new_tokens=request.max_new_tokens,
            params=params,
            arrival=time.monotonic(),
            prompt_logprobs=bool(params.decoder_input_details),
        )
        message = self._queue_input()
        (message.beams if (params.num_beams or 1) > 1 else message.new).append(core_request)
        return key

    def _queue_input(self) -> CoreInput:
        """This event-loop turn's message to the core (sent once the turn's callbacks have run)."""
        with self._pending_lock:
            if self._pending is None:
                self._pending = CoreInput()
                assert self._loop is not None, "the engine is started before requests arrive"
                if threading.get_ident() == self._loop_thread:
                    self._loop.call_soon(self._flush)
                else:
                    self._loop.call_soon_threadsafe(self._flush)
            return self._pending

    def _flush(self) -> None:
        with self._pending_lock:
            message, self._pending = self._pending, None
        if message and self._dead is None and self._started:
            self._core.send(message)

    # -- from the core -------------------------------------------------------------------------
    def _on_output(self, out: CoreOutput) -> None:
        """One step's results: events to each request's queue; stop-string finishes back to the core."""
        self._take_stats(out)
        clients = self._clients
        for key, queue_time, cached in out.admitted:
            client = clients.get(key)
            if client is not None:
                client.output.queue_time = queue_time
                client.output.cached_tokens = cached
        for key, start, values in out.prompt_logprobs:
            client = clients.get(key)
            if client is not None:
                self.output.add_prompt_logprobs(client.output, start, values)
        for key, message in out.failed:
            client = clients.pop(key, None)
            if client is not None:
                client.queue.put_nowait(GenerationError(message))
        process = self.output.process
        finished = self.stats.finished
        stopped_here: list[int] = []
        for key, tok, logprob, top, reason in out.tokens:
            client = clients.get(key)
            if client is None:  # aborted or stopped here while the core sampled it
                continue
            state = client.output
            events = process(state, (tok,), (logprob,), (top,))
            if state.finish_reason is None and reason is not None:  # the core's rule ended it
                final = self.output.finish(state, FinishReason(reason), events[-1] if events else None)
                if final is not None:
                    events.append(final)
            put = client.queue.put_nowait
            for event in events:
                put(event)
            if state.finish_reason is not None:
                name = state.finish_reason.value
                finished[name] = finished.get(name, 0) + 1
                del clients[key]
                if reason is None:
                    stopped_here.append(key)
        for key, ids in out.beams:
            client = clients.pop(key, None)
            if client is not None:
                self._deliver_beam(client, ids)
        if stopped_here:
            self._queue_input().finished.extend(stopped_here)

    def _deliver_beam(self, client: _Client, ids: list[int]) -> None:
        state = client.output
        events = self.output.process(state, ids, [0.0] * len(ids))
        final = self.output.finish(state, FinishReason.LENGTH, events[-1] if events else None)
        if final is not None:
            events.append(final)
        for event in events:
            client.queue.put_nowait(event)

    def _take_stats(self, out: CoreOutput) -> None:
        for name in _CORE_STAT_FIELDS:
            setattr(self.stats, name, getattr(out.stats, name))
        self.stats.failed += self._local_failed

    def _on_core_exit(self, why: str) -> None:
        """The core is gone: every request in flight fails, the server is told (it exits non-zero)."""
        if self._stopping:
            return
        self._dead = why
        self._accepting = False
        log.error("%s: failing %d request(s) in flight", why, len(self._clients))
        self._fail_all(GenerationError(f"generation failed: {why}"))
        self.stats.waiting = self.stats.running = 0
        if self.on_core_exit is not None:
            self.on_core_exit(why)

    def _fail_all(self, error: BaseException) -> None:
        clients, self._clients = self._clients, {}
        self._by_id.clear()
        for client in clients.values():
            client.queue.put_nowait(error)
        self._local_failed += len(clients)
        self.stats.failed += len(clients)
