"""The lean forward's decoder layer through ``torch.compile``: the element-wise work fused.

In the eager lean forward (lean_llama.py) a layer is 4 GEMMs, one attention call and ~15
element-wise ops: two float32 RMSNorms with their casts, rotary, SiLU-times-up, two residual adds.
Each op is a full pass over ``[T, hidden]`` or ``[T, 2 * intermediate]`` and an OpenMP region of its
own; in a 1,024-token prefill step they took 44% of the time, more than the GEMMs
(bench/prefill_profile.py). Inductor turns them into a few fused C++ loops per layer.

What is compiled: ``lean_llama.decoder_layer`` once, as a function of tensors, so **one graph
serves every layer** (the weights are inputs, not constants). The GEMMs stay oneDNN's prepacked AMX
kernels behind an opaque op (``streamhost::packed_linear``; inductor cannot lower a prepacked
weight it did not pack itself), and attention stays ``streamhost::lean_attention``, which writes
the layer's keys and attends with the step's plan read from ``kv_cache.COMPILED_STEP`` (as the
compiled transformers step does, compiled_step.py).

Which steps: those of at least ``MIN_TOKENS`` tokens (prompt chunks, large mixed steps). Measured
on this machine, the compiled layer cut a 1,024-token prefill step's CPU time by ~22% (the fused
element-wise work) but made decode steps no faster (16 sequences) or slower (1 sequence: dynamo's
guard check per layer call costs more than the few small ops it fuses; 23 -> 30 ms a step, and
through the server 39 -> 32 tok/s at one stream), so decode steps stay eager
(bench/results/step-profile-20261203-230235.json, torch-vs-vllm-16-20261203-225837.json).

Shapes: the token count is the only dimension that changes, and it is compiled **dynamic**: one
graph for every step of ``MIN_TOKENS`` tokens or more, no padding to buckets, no recompiles as
prompt chunks and batch sizes vary. It is compiled at start-up (``LeanCompiled.warm_up``) before
the server says it is ready. Inductor's FX-graph cache lives under the streamhost cache folder,
keyed by model config, dtype, the shape set and the torch version, so a restart skips the C++
compile. ``emulate_precision_casts`` keeps eager's bf16 roundings inside the fused loops, so tokens
stay those of transformers' forward (a few ulps of logit drift remain: max 0.5 on SmolLM2's logits).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F

from streamhost.engine.compiled_step import CompileReport, _counters, use_cache_dir
from streamhost.engine.kv_cache import COMPILED_STEP, StepPlan, attend, write_token_keys
from streamhost.engine.lean_llama import decoder_layer

if TYPE_CHECKING:
    from streamhost.engine.lean_llama import LeanLlama

log = logging.getLogger(__name__)

# Steps of at least MIN_TOKENS tokens run compiled, through one dynamic graph (SHAPES names the set
# for the cache key); WARM_UP_TOKENS is the step it is compiled with (inductor sizes its loops'
# parallelism from this hint, so a prompt-chunk-like size).
MIN_TOKENS = 64
SHAPES = (f"{MIN_TOKENS}+",)
WARM_UP_TOKENS = 256


@torch.library.custom_op("streamhost::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    """oneDNN's GEMM on a weight prepacked by ``mkldnn._reorder_linear_weight``; opaque to inductor."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@packed_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


@torch.library.custom_op("streamhost::lean_attention", mutates_args=())
def lean_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float) -> torch.Tensor:
    """Write this layer's keys ``[T, KV, D]`` and attend ``q [T, H, D]``; ``[T, H * D]`` out. The layer
    is the count of calls since the step began (layers run in order)."""
    plan = COMPILED_STEP.plan
    if plan is None:
        raise RuntimeError("streamhost::lean_attention called outside a compiled lean step")
    layer = COMPILED_STEP.layer
    COMPILED_STEP.layer += 1
    write_token_keys(plan, layer, k, v)
    return attend(plan, layer, q.transpose(0, 1)[None], scaling).view(q.shape[0], q.shape[1] * q.shape[2])


@lean_attention.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float) -> torch.Tensor:
    return q.new_empty((q.shape[0], q.shape[1] * q.shape[2]))


def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float) -> torch.Tensor:
    return torch.ops.streamhost.lean_attention(q, k, v, scaling)


def _packed_linear_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: int) -> torch.Tensor:
    return torch.ops.streamhost.packed_linear(x, weight, bias, out)


def _plain_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: int) -> torch.Tensor:
    return F.linear(x, weight, bias)


class LeanCompiled:
    """The compiled decoder layer of one ``LeanLlama``; ``run`` is the step's whole decoder stack."""

    def __init__(self, lean: LeanLlama, cache_dir: Path | None) -> None:
        import torch._dynamo.config as dynamo_config

        self.cache_dir = cache_dir
        self.num_layers = len(lean.layers)
        use_cache_dir(cache_dir)
        # one graph is expected; past the limit dynamo would run eagerly
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 2)
        linear = _packed_linear_op if lean.lm_head.packed else _plain_linear

        def layer(*args: Any) -> torch.Tensor:
            return cast(Any, decoder_layer)(*args, _attention_op, linear)

        self._layer: Callable[..., torch.Tensor] = torch.compile(
            layer, dynamic=False, fullgraph=True, options={"emulate_precision_casts": True}
        )
        self.report = CompileReport((WARM_UP_TOKENS,), cache_dir=str(cache_dir) if cache_dir else None)
        self._graphs_when_warm = _counters()["graphs"]

    def run(
        self, lean: LeanLlama, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, plan: StepPlan
    ) -> torch.Tensor:
        """``h [T >= MIN_TOKENS, hidden]`` through every decoder layer (``cos``/``sin`` computed once)."""
        for tensor in (h, cos, sin):  # the token dimension is symbolic (a no-op once the graph exists)
            torch._dynamo.maybe_mark_dynamic(tensor, 0)
        COMPILED_STEP.begin(plan)
        try:
            for layer in lean.layers:
                h = self._layer(h, cos, sin, *layer.tensors(), *lean.layer_constants(layer))
            attended = COMPILED_STEP.layer
        finally:
            COMPILED_STEP.end()
        if attended != len(lean.layers):
            raise RuntimeError(f"compiled lean step attended {attended} layers, the model has {len(lean.layers)}")
        return h

    def handles(self, tokens: int) -> bool:
        """Whether a step of ``tokens`` tokens runs compiled (the others run the eager layer)."""
        return tokens >= MIN_TOKENS

    def warm_up(self, run_tokens: Callable[[int], None]) -> CompileReport:
        """Compile the graph now (``run_tokens(n)`` runs one step of ``n`` tokens) and log what it cost."""
        before = _counters()
        started = time.perf_counter()
        for size in (WARM_UP_TOKENS,):
            t0 = time.perf_counter()
            run_tokens(size)
            self.report.per_bucket_s[size] = time.perf_counter() - t0
        self._graphs_when_warm = self.report.record(before, started)["graphs"]
        log.info(
            "compiled the lean decoder layer (one graph for all %d layers) for steps of %d+ tokens (dynamic; "
            "smaller steps run eagerly) in %.1f s, %s; %d graph%s%s",
            self.num_layers,
            MIN_TOKENS,
            self.report.seconds,
            self.report.source,
            self.report.graphs,
            "" if self.report.graphs == 1 else "s",
            f"; cache {self.cache_dir}" if self.cache_dir else "",
        )
        return self.report

    def recompiles(self) -> int:
        """Graphs compiled since warm-up (0 while every step found the one graph)."""
        return _counters()["graphs"] - self._graphs_when_warm
