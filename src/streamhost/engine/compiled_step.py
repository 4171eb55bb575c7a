"""The packed step's forward through ``torch.compile``, for the small steps where Python overhead rules.

A decode step of a 135M model on a CPU does little arithmetic per op, so eager PyTorch spends much
of it dispatching ~30 ops per layer from Python; inductor fuses the norms, rotary embedding, SiLU
and residual adds into a few C++ kernels per layer. What it compiles: the model's decoder stack
(embedding to final norm) with the attention left opaque (``streamhost::packed_attention`` in
kv_cache.py, which reads the step's plan the way vLLM's attention reads its forward context), then
the LM head runs eagerly on the rows that asked for logits.

Shapes are bucketed so recompiles stay bounded: a step's token count is padded up to the next of
``BUCKETS`` (padding tokens attend to nothing and write no keys) and each bucket is one static
graph, compiled and run once at start-up (``warm_up``) before the server says it is ready. Steps
with more tokens than the largest bucket (prompt chunks) run eagerly: their time is in the matmuls,
which compiling does not make faster. Inductor's FX-graph and AOTAutograd caches live under the
streamhost cache folder, one folder per (model config, dtype, buckets, torch version, device), so a
restart skips the C++ compile and only re-traces.

Whether it pays is measured by ``bench/engine.py --compile-peers`` (tok/s) and
``bench/step_profile.py`` (where a step's time goes); the per-device default follows from that
measurement (``default_compile``: off, see docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from streamhost.engine.kv_cache import COMPILED_STEP, StepPlan

log = logging.getLogger(__name__)

BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)  # decode steps up to the default MAX_BATCH_SIZE (32)
# Model families whose causal-LM head is exactly ``lm_head(last_hidden_state)`` and whose decoder
# layers call the attention interface once each, in order (what the opaque attention op relies on).
SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def default_compile(device: torch.device) -> bool:
    """Off on every device for now. CPU: bench/engine.py --compile-peers measured compiled/eager
    1.09 / 0.91 / 1.10 tok/s at 1 / 4 / 16 streams and bench/step_profile.py 1.12 / 0.95 / 0.95 per
    step (within the noise of a shared 2-core machine)
    for minutes of cold compiling at start-up (docs/architecture.md). GPU: not measured yet."""
    return False


def bucket_for(tokens: int, buckets: tuple[int, ...] = BUCKETS) -> int | None:
    """The smallest bucket holding ``tokens`` tokens, or None when the step is too large to compile."""
    for size in buckets:
        if tokens <= size:
            return size
    return None


def unsupported_reason(model: Any) -> str | None:
    """Why this model's step cannot be compiled (None when it can)."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} is not one of {sorted(SUPPORTED_MODEL_TYPES)}"
    if getattr(model.config, "final_logit_softcapping", None):
        return "the model softcaps its logits"
    return None


def default_compile_lean(device: torch.device) -> bool:
    """Whether the lean forward's decoder layer is compiled (lean_compiled.py) unless told."""
    return False


def cache_key(
    model_config: dict,
    dtype: torch.dtype,
    buckets: tuple[int | str, ...],
    device: torch.device,
    variant: str = "step",
) -> str:
    """The compile cache folder's name: what the compiled graphs depend on, hashed. ``variant``: which
    compiled forward (the transformers ``step`` here, or the ``lean-layer`` of lean_compiled.py)."""
    facts: dict[str, Any] = {
        "config": model_config,
        "dtype": str(dtype),
        "buckets": list(buckets),
        "torch": torch.__version__,
        "device": device.type,
    }
    if variant != "step":
        facts["variant"] = variant
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    prefix = "" if variant == "step" else f"{variant}-"
    return f"{prefix}{model_config.get('model_type', 'model')}-{str(dtype).removeprefix('torch.')}-{digest}"


def use_cache_dir(folder: Path | None) -> None:
    """Point inductor's on-disk caches (FX graphs, AOTAutograd, compiled C++) at ``folder``; None: off."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    if folder is None:
        inductor_config.fx_graph_cache = False
        functorch_config.enable_autograd_cache = False
        return
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True


def _counters() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {
        "graphs": int(counters["stats"]["unique_graphs"]),
        "cache_hits": int(counters["inductor"]["fxgraph_cache_hit"]),
        "cache_misses": int(counters["inductor"]["fxgraph_cache_miss"]),
    }


@dataclass
class CompileReport:
    """What start-up compiled, how long it took and whether inductor's disk cache supplied it."""

    buckets: tuple[int, ...]
    seconds: float = 0.0
    graphs: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    cache_dir: str | None = None
    per_bucket_s: dict[int, float] = field(default_factory=dict)

    @property
    def source(self) -> str:
        if self.cache_hits and not self.cache_misses:
            return "from the disk cache"
        if self.cache_hits:
            return f"partly from the disk cache ({self.cache_hits} hits, {self.cache_misses} misses)"
        return "compiled afresh" + (" (disk cache off)" if self.cache_dir is None else "")

    def record(self, before: dict[str, int], started: float) -> dict[str, int]:
        """Fill in what happened since ``before`` (dynamo/inductor counters) and ``started``
        (perf_counter); returns the counters now, for later recompile checks."""
        after = _counters()
        self.seconds = time.perf_counter() - started
        self.graphs = after["graphs"] - before["graphs"]
        self.cache_hits = after["cache_hits"] - before["cache_hits"]
        self.cache_misses = after["cache_misses"] - before["cache_misses"]
        return after

    def summary(self) -> str:
        return (
            f"compiled the packed step for token buckets {list(self.buckets)} "
            f"in {self.seconds:.1f} s, {self.source}; {self.graphs} graphs"
            + (f"; cache {self.cache_dir}" if self.cache_dir else "")
        )


class CompiledStep:
    """The compiled decoder stack plus the eager LM head; ``run`` is one padded packed forward."""

    def __init__(
        self,
        model: Any,  # a transformers PreTrainedModel
        device: torch.device,
        cache_dir: Path | None,
        buckets: tuple[int, ...] = BUCKETS,
    ) -> None:
        import torch._dynamo.config as dynamo_config

        self.device = device
        self.buckets = tuple(sorted(buckets))
        self.cache_dir = cache_dir
        self.num_layers = int(model.config.num_hidden_layers)
        use_cache_dir(cache_dir)
        # One graph per bucket, never more: past the limit dynamo would run the frame eagerly.
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, len(self.buckets) + 1)
        base = getattr(model, model.base_model_prefix)
        # On a GPU, CUDA graphs for the pieces between attention calls (the op is tagged
        # cudagraph_unsafe, so inductor partitions the graph around it). Not measured here: no GPU
        # was lent to the session that wrote this, so the GPU default stays off (default_compile).
        mode = "reduce-overhead" if device.type == "cuda" else None
        self._decoder = torch.compile(base, dynamic=False, fullgraph=True, mode=mode)
        self._head = model.get_output_embeddings()
        self.report = CompileReport(self.buckets, cache_dir=str(cache_dir) if cache_dir else None)
        self._graphs_when_warm = _counters()["graphs"]

    def bucket_for(self, tokens: int) -> int | None:
        return bucket_for(tokens, self.buckets)

    def run(self, plan: StepPlan, ids: list[int], keep: list[int], bucket: int) -> torch.Tensor | None:
        """Logits ``[len(keep), V]`` for the kept token indices (None if none), the step padded to ``bucket``."""
        n = len(ids)
        input_ids = torch.zeros((1, bucket), dtype=torch.long, device=self.device)
        input_ids[0, :n] = torch.tensor(ids, dtype=torch.long, device=self.device)
        positions = torch.zeros((1, bucket), dtype=torch.long, device=self.device)
        positions[0, :n] = plan.token_positions
        COMPILED_STEP.begin(plan)
        try:
            hidden = self._decoder(
                input_ids=input_ids, position_ids=positions, use_cache=False, streamhost_compiled=True
            ).last_hidden_state
            layers = COMPILED_STEP.layer
        finally:
            COMPILED_STEP.end()
        if layers != self.num_layers:
            raise RuntimeError(f"compiled step attended {layers} layers, the model has {self.num_layers}")
        if not keep:
            return None
        return self._head(hidden[0, torch.tensor(keep, device=self.device)])

    def warm_up(self, run_bucket: Callable[[int], None]) -> CompileReport:
        """Compile every bucket now (``run_bucket(size)`` runs one step of that many tokens), logging progress."""
        before = _counters()
        started = time.perf_counter()
        for i, size in enumerate(self.buckets, 1):
            t0 = time.perf_counter()
            run_bucket(size)
            self.report.per_bucket_s[size] = time.perf_counter() - t0
            log.info(
                "compiling the packed step: bucket %d/%d (%d tokens) ready in %.1f s",
                i,
                len(self.buckets),
                size,
                self.report.per_bucket_s[size],
            )
        self._graphs_when_warm = self.report.record(before, started)["graphs"]
        log.info("%s", self.report.summary())
        return self.report

    def recompiles(self) -> int:
        """Graphs compiled since start-up's warm-up (0 while every step found its bucket's graph)."""
        return _counters()["graphs"] - self._graphs_when_warm
