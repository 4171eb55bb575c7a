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

Shapes: the token count is the only dimension that changes, and it is compiled **dynamic** (one
graph for every step of 2 tokens or more: no padding to buckets, no recompiles as prompt chunks and
batch sizes vary) plus the 1-token step, which dynamo specialises on its own: two graphs in all,
both compiled at start-up (``LeanCompiled.warm_up``) before the server says it is ready. Inductor's
FX-graph cache lives under the streamhost cache folder, keyed by model config, dtype, the shape set
and the torch version, so a restart skips the C++ compile. ``emulate_precision_casts`` keeps eager's
bf16 roundings inside the fused loops, so tokens stay those of transformers' forward.
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

# The shape set start-up compiles: one token (decode of one sequence), and every larger step
# through one dynamic graph; WARM_UP_TOKENS is the larger step it is compiled with (inductor sizes
# its loops' parallelism from this hint, so a prompt-chunk-like size rather than 2).
SHAPES = ("1", "2+")
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
        # two graphs are expected (1 token, 2+ tokens); past the limit dynamo would run eagerly
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 4)
        linear = _packed_linear_op if lean.lm_head.packed else _plain_linear

        def layer(*args: Any) -> torch.Tensor:
            return cast(Any, decoder_layer)(*args, _attention_op, linear)

        self._layer: Callable[..., torch.Tensor] = torch.compile(
            layer, dynamic=False, fullgraph=True, options={"emulate_precision_casts": True}
        )
        self.report = CompileReport((1, WARM_UP_TOKENS), cache_dir=str(cache_dir) if cache_dir else None)
        self._graphs_when_warm = _counters()["graphs"]

    def run(
        self, lean: LeanLlama, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, plan: StepPlan
    ) -> torch.Tensor:
        """``h [T, hidden]`` through every decoder layer (the caller computed ``cos``/``sin`` once)."""
        dynamic = h.shape[0] > 1
        if dynamic:  # the token dimension is symbolic in the 2+ graph (no-op once it exists)
            for tensor in (h, cos, sin):
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

    def warm_up(self, run_tokens: Callable[[int], None]) -> CompileReport:
        """Compile both graphs now (``run_tokens(n)`` runs one step of ``n`` tokens) and log what it cost."""
        before = _counters()
        started = time.perf_counter()
        for size in (1, WARM_UP_TOKENS):
            t0 = time.perf_counter()
            run_tokens(size)
            self.report.per_bucket_s[size] = time.perf_counter() - t0
        after = _counters()
        self.report.seconds = time.perf_counter() - started
        self.report.graphs = after["graphs"] - before["graphs"]
        self.report.cache_hits = after["cache_hits"] - before["cache_hits"]
        self.report.cache_misses = after["cache_misses"] - before["cache_misses"]
        self._graphs_when_warm = after["graphs"]
        log.info(
            "compiled the lean decoder layer (one graph for all %d layers) for 1-token steps and for steps of "
            "2+ tokens (dynamic) in %.1f s, %s; %d graphs%s",
            self.num_layers,
            self.report.seconds,
            self.report.source,
            self.report.graphs,
            f"; cache {self.cache_dir}" if self.cache_dir else "",
        )
        return self.report

    def recompiles(self) -> int:
        """Graphs compiled since warm-up (0 while every step found one of the two)."""
        return _counters()["graphs"] - self._graphs_when_warm
