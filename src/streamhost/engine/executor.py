"""Runs the model: PyTorch through transformers' AutoModelForCausalLM, any architecture it loads.

Llama-family models (Llama, Mistral, Qwen2, SmolLM) run through our own forward instead
(lean_llama.py: fused, oneDNN-prepacked projections; ``lean=False`` / ``STREAMHOST_LEAN_FORWARD=0``
keeps transformers' forward); every other architecture, and compiled steps, use transformers'.

The executor knows nothing about requests. Its one verb, ``forward(segments)``, runs a packed step
(decode tokens and prompt chunks together, see kv_cache.py) and returns the logits each segment
asked for; the engine samples from them. Around it, the engine asks the executor for KV rows
(``alloc_row``/``free_row``/``reserve``/``live_rows``/``release_idle_memory``), the tokenizer and
the model's EOS ids. That is the whole seam another executor (llama.cpp) has to fill; see
:class:`streamhost.engine.executor_api.Executor`. CPU or CUDA is chosen automatically; the dtype
defaults to bf16 where the hardware runs it fast.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from streamhost.engine.compiled_step import (
    BUCKETS,
    CompiledStep,
    cache_key,
    default_compile,
    default_compile_lean,
    unsupported_reason,
)
from streamhost.engine.cpu_features import has_amx, has_fast_bf16
from streamhost.engine.decode_attention import load_kernel, load_layer_ops, load_library, switched_on
from streamhost.engine.kv_cache import DECODE_BUCKET, KVStore, PackedStepCache, Segment, StepPlan, register_attention
from streamhost.engine.lean_llama import LeanLlama
from streamhost.engine.lean_llama import unsupported_reason as lean_unsupported_reason
from streamhost.engine.prefix_cache import MIN_MATCH_TOKENS, Claim

log = logging.getLogger(__name__)

_DTYPE_NAMES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when present, else CPU; ``requested`` ("cpu", "cuda", "cuda:1") wins."""
    if requested and requested != "auto":
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(requested: str | None, device: torch.device) -> torch.dtype:
    """Explicit choice wins; otherwise bf16 on GPUs and on CPUs with bf16 instructions, fp32 elsewhere."""
    if requested and requested != "auto":
        try:
            return _DTYPE_NAMES[requested.lower()]
        except KeyError as exc:
            raise ValueError(f"unknown dtype {requested!r}; use one of bf16, fp16, fp32") from exc
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if has_fast_bf16() else torch.float32


PROMPT_FLOAT32_ENV = "STREAMHOST_PROMPT_FLOAT32"


def prompt_float32(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a bf16 model's prompt work (the GEMMs of steps of WIDE_STEP_ROWS tokens or more, and
    prompt attention) runs in float32, rounded back to bf16. ``STREAMHOST_PROMPT_FLOAT32`` = 1 / 0
    decides; by default yes on a CPU without AMX tiles, where AVX512-BF16's dot products peak lower
    than float32 FMAs (docs/architecture.md, "Prompt work in float32 without AMX")."""
    choice = os.environ.get(PROMPT_FLOAT32_ENV, "auto").strip().lower()
    if device.type != "cpu" or dtype != torch.bfloat16 or choice in ("0", "false", "no", "off"):
        return False
    return choice in ("1", "true", "yes", "on") or not has_amx()


SMALL_GEMM_ENV = "STREAMHOST_SMALL_GEMM"


def small_gemm_applies(device: torch.device, dtype: torch.dtype) -> bool:
    """Our small-row bf16 GEMM (csrc/small_gemm.cpp) for the lean forward's weights: on a CPU with
    AVX512-BF16 and no AMX (where oneDNN's AMX kernels win), unless ``STREAMHOST_SMALL_GEMM=0``."""
    if not switched_on(SMALL_GEMM_ENV):
        return False
    if device.type != "cpu" or dtype != torch.bfloat16 or has_amx() or not load_library():
        return False
    return bool(torch.ops.streamhost_gemm.supported())


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}.get(dtype, str(dtype))


class TorchExecutor:
    """Owns the model weights, the tokenizer and the KV store."""

    name = "torch"
    supports_beam_search = True

    def __init__(
        self,
        model_path: str | os.PathLike,
        dtype: str | None = None,
        device: str | None = None,
        trust_remote_code: bool = False,
        max_rows: int = 1024,
        max_positions: int | None = None,
        batch_invariant: bool = False,
        compile: bool | None = None,
        compile_cache_dir: Path | None = None,
        compile_buckets: tuple[int, ...] | None = None,
        lean: bool | None = None,
        compile_lean: bool | None = None,
        decode_kernel: bool | None = None,
        layer_ops: bool | None = None,
        small_gemm: bool | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.config = AutoConfig.from_pretrained(self.model_path, trust_remote_code=trust_remote_code)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(
            self.model_path, dtype=self.dtype, trust_remote_code=trust_remote_code
        ).to(self.device)  # type: ignore[arg-type]  # transformers' decorated .to() confuses mypy
        self.model.eval()
        self.model.set_attn_implementation(register_attention())
        self.num_layers = int(getattr(self.config, "num_hidden_layers", 0) or len(self._decoder_layers()))
        self.max_positions = max_positions or self.model_max_positions() or 4096
        self.store = KVStore(max_rows=max_rows, max_positions=self.max_positions)
        self.batch_invariant = batch_invariant  # kv_cache.py: group decode rows by length bucket only
        # decode_attention.py: one kernel call per layer for the one-token queries (CPU only)
        self.decode_kernel = (decode_kernel is not False) and self.device.type == "cpu" and load_kernel()
        self.layer_ops = False  # set below, once the lean forward exists (the compiled step's warm-up runs first)
        self.prompt_float32 = prompt_float32(self.device, self.dtype)
        self.compiled: CompiledStep | None = None
        if default_compile(self.device) if compile is None else compile:
            self._compile(compile_cache_dir, tuple(compile_buckets or BUCKETS))
        self.lean: LeanLlama | None = None
        compile_lean = default_compile_lean(self.device) if compile_lean is None else compile_lean
        self._small_gemm = small_gemm is not False and not compile_lean and small_gemm_applies(self.device, self.dtype)
        if self.compiled is None and lean is not False:
            self._use_lean_forward()
        # decode_attention.py / csrc/layer_ops.cpp: the eager lean layer's element-wise work and KV writes
        self.layer_ops = (
            self.lean is not None and layer_ops is not False and self.device.type == "cpu" and load_layer_ops()
        )
        if self.layer_ops:
            assert self.lean is not None
            self.lean.use_fused_ops()
        if self.lean is not None:
            self.lean.wide_gemm_float32 = self.prompt_float32
        if self.lean is not None and compile_lean:
            self._compile_lean(compile_cache_dir)

    def describe(self) -> dict:
        """What /info reports under ``torch``: which forward and which decode attention run."""
        return {
            "executor": self.name,
            "lean_forward": self.lean is not None,
            "compiled_step": self.compiled is not None,
            "compiled_lean_layer": self.lean is not None and self.lean.compiled is not None,
            "decode_attention": "kernel" if self.decode_kernel else "sdpa",
            "layer_ops": "fused" if self.layer_ops else "torch",
            "prompt_float32": self.prompt_float32,
            "gemm": "small-row" if self.lean is not None and self.lean.lm_head.small else "onednn",
            "batch_invariant": self.batch_invariant or self.decode_kernel,
        }

    def _use_lean_forward(self) -> None:
        """Our Llama-family forward (lean_llama.py) where it applies; transformers' forward otherwise."""
        why_not = lean_unsupported_reason(self.model)
        if why_not:
            log.info("lean forward off (%s): running transformers' forward", why_not)
            return
        self.lean = LeanLlama(self.model, small_gemm=self._small_gemm)
        layout = "small-row GEMM" if self.lean.lm_head.small else "prepacked" if self.lean.lm_head.packed else "plain"
        log.info("lean forward on: fused q/k/v and gate/up, %s weights", layout)

    def _compile_lean(self, cache_root: Path | None) -> None:
        """Compile the lean forward's decoder layer now (lean_compiled.py): one graph for the steps of
        MIN_TOKENS or more, ~20-45 s cold here, seconds from the disk cache."""
        from streamhost.engine.lean_compiled import SHAPES, LeanCompiled

        assert self.lean is not None
        if self.device.type != "cpu":  # inductor would need Triton there, and nothing was measured
            log.warning("not compiling the lean decoder layer on %s (built and measured for CPUs)", self.device)
            return
        folder = None
        if cache_root is not None:
            key = cache_key(self.config.to_dict(), self.dtype, SHAPES, self.device, variant="lean-layer")
            folder = Path(cache_root) / "compile" / key
        log.info("compiling the lean decoder layer for prompt-sized steps (cache %s)", folder or "off")
        self.lean.compiled = LeanCompiled(self.lean, folder)
        self.lean.compiled.warm_up(self._warm_up_bucket)
        self.store.reset()

    def _compile(self, cache_root: Path | None, buckets: tuple[int, ...]) -> None:
        """Compile the small-step forward for every bucket now (minutes cold, seconds from the cache)."""
        why_not = unsupported_reason(self.model)
        if why_not:
            log.warning("not compiling the packed step: %s; running eagerly", why_not)
            return
        folder = None
        if cache_root is not None:
            key = cache_key(self.config.to_dict(), self.dtype, buckets, self.device)
            folder = Path(cache_root) / "compile" / key
        log.info("compiling the packed step for token buckets %s (cache %s)", list(buckets), folder or "off")
        self.compiled = CompiledStep(self.model, self.device, folder, buckets)
        self.compiled.warm_up(self._warm_up_bucket)
        self.store.reset()

    def _warm_up_bucket(self, size: int) -> None:
        """One throwaway step of ``size`` tokens on a fresh row, so its bucket's graph exists."""
        row = self.alloc_row()
        try:
            self.forward([Segment(row, [0] * size, 0, "last")])
        finally:
            self.free_row(row)

    def configure(self, limits, prefill_chunk: int) -> None:
        """Nothing to size up front: the KV store grows on demand (see KVStore.reserve)."""

    def _decoder_layers(self):
        base = getattr(self.model, self.model.base_model_prefix, self.model)
        return getattr(base, "layers", None) or getattr(base, "h", None) or []

    def model_max_positions(self) -> int | None:
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(self.config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.config):
            value = getattr(source, "eos_token_id", None) if source is not None else None
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return ids

    @torch.inference_mode()
    def forward(self, segments: list[Segment]) -> list[torch.Tensor | None]:
        """One packed forward; per segment the logits it asked for: ``[V]`` (last), ``[n, V]`` (all) or None."""
        need_rows = max(s.row for s in segments) + 1
        need_positions = max(
            _round_up_bucket(s.start + 1) if len(s.ids) == 1 else s.start + len(s.ids) for s in segments
        )
        self.store.reserve(need_rows, need_positions)
        plan = StepPlan.build(
            self.store, segments, self.dtype, self.device, invariant=self.batch_invariant, kernel=self.decode_kernel
        )
        plan.fused_writes = self.layer_ops
        plan.prompt_attention_float32 = self.prompt_float32
        keep: list[int] = []
        spans: list[tuple[int, int]] = []
        q = 0
        for s in segments:
            n = len(s.ids)
            first = len(keep)
            if s.logits == "all":
                keep.extend(range(q, q + n))
            elif s.logits == "last":
                keep.append(q + n - 1)
            spans.append((first, len(keep)))
            q += n
        flat_ids = [t for s in segments for t in s.ids]
        bucket = self.compiled.bucket_for(q) if self.compiled is not None else None
        if self.compiled is not None and bucket is not None:
            return _split_logits(segments, spans, self.compiled.run(plan, flat_ids, keep, bucket))
        if self.lean is not None:
            ids = torch.tensor(flat_ids, dtype=torch.long, device=self.device)
            kept = torch.tensor(keep, device=self.device) if keep else None
            return _split_logits(segments, spans, self.lean.forward(ids, plan, kept))
        out = self.model(
            input_ids=torch.tensor([flat_ids], dtype=torch.long, device=self.device),
            position_ids=plan.token_positions[None, :],
            cache=PackedStepCache(plan, self.num_layers),
            use_cache=True,
            logits_to_keep=torch.tensor(keep, device=self.device) if keep else 1,
            streamhost_plan=plan,
        )
        return _split_logits(segments, spans, out.logits[0])

    # -- KV rows ---------------------------------------------------------------------------------
    def alloc_row(self) -> int:
        return self.store.alloc_row()

    def claim_row(self, prompt_ids: Sequence[int], min_match: int = MIN_MATCH_TOKENS) -> Claim:
        """A row for a new prompt, reusing the longest prefix a free row holds (prefix_cache.py)."""
        return self.store.claim_row(prompt_ids, min_match)

    def free_row(self, row: int, tokens: Sequence[int] | None = None) -> None:
        self.store.free_row(row, tokens)

    def reserve(self, rows: int, positions: int) -> None:
        """Make room for ``rows`` rows of ``positions`` tokens now (one allocation for a step's newcomers)."""
        self.store.reserve(rows, positions)

    @property
    def live_rows(self) -> int:
        return self.store.live_rows

    def release_idle_memory(self, keep_bytes: int) -> None:
        """With no live rows: drop the KV buffers if they hold more than ``keep_bytes`` (and with
        them what the free rows held for prefix reuse)."""
        if self.store.live_rows == 0 and self.store.nbytes() > keep_bytes:
            self.store.reset()


def _split_logits(
    segments: list[Segment], spans: list[tuple[int, int]], logits: torch.Tensor | None
) -> list[torch.Tensor | None]:
    """Each segment's share of the kept logits: ``[n, V]`` (all), ``[V]`` (last) or None."""
    results: list[torch.Tensor | None] = []
    for s, (a, b) in zip(segments, spans):
        if s.logits == "all" and logits is not None:
            results.append(logits[a:b])
        elif s.logits == "last" and logits is not None:
            results.append(logits[a])
        else:
            results.append(None)
    return results


def _round_up_bucket(n: int) -> int:
    return -(-n // DECODE_BUCKET) * DECODE_BUCKET
