"""The engine's KV cache and the attention that reads it.

Layout: per layer, one buffer ``[rows, kv_heads, capacity, head_dim]``; every live sequence owns a
row from admission to exit. Why rows rather than TGI's filter/concatenate of padded caches: a
sequence joining costs nothing (its prefill writes straight into its row), leaving costs nothing
(the row goes back to the free list), and no step ever copies another sequence's cache.

Each step runs ONE forward over a packed row of tokens: every decoding sequence's next token and
any prompt chunks being prefilled ("segments"). Linear layers see all tokens at once (on a CPU
the weight read dominates, so extra tokens are nearly free); attention is done per segment by
``packed_attention`` against each sequence's own row. Decode segments on consecutive rows share an
SDPA call over a view of their rows, padded (masked) to the longest 64-token bucket among them; the
view is strided (a row's buffer is longer than the bucket) and SDPA's flash kernel reads it in place.
Where rows of very different lengths sit side by side (a 47-token chat beside a 700-token one), the
run is split where padding would cost more than another call (``_decode_runs``, an exact minimum of
calls x ``DECODE_CALL_COST`` + padded row-keys): 1.25x faster attention at 16 rows of the server's
mixed lengths, 1.5x at 32 (bench/attention_runs.py).
An earlier CPU path (two batched matmuls and a float32 softmax over the rows' whole buffers, since
the CPU ``bmm`` copies strided operands) lost to SDPA with torch 2.13 in every case measured on this
machine (one layer, 9 query / 3 KV heads, bf16, best of 10): 1 row 33 against 128 us, 4 rows 151
against 277 us, 16 rows of 200-700 tokens 0.94 against 1.42 ms, 32 rows 1.8 against 2.7 ms, with one
thread; with two, PASSIVE or spinning, SDPA kept a 1.2-3x lead. It reads only the bucket, not the
doubled buffer.
``STREAMHOST_BATCH_INVARIANT=1`` instead groups only rows whose lengths fall in the same bucket, so
a sequence's attention is computed over the same key length whatever else is in the batch (exact
batch invariance of attention; with mixed lengths it costs one SDPA call per row).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from streamhost.engine.decode_attention import decode_attention
from streamhost.engine.prefix_cache import MIN_MATCH_TOKENS, Claim, RowPool

ATTENTION_NAME = "streamhost_packed"
DECODE_BUCKET = 64


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _grow(needed: int, current: int, ceiling: int) -> int:
    size = max(current, 8)
    while size < needed:
        size *= 2
    return max(min(size, ceiling), needed)


class KVStore:
    """Row-per-sequence key/value buffers, allocated lazily from the first keys the model writes."""

    def __init__(self, max_rows: int, max_positions: int) -> None:
        self.max_rows = max_rows
        self.max_positions = max_positions
        self.keys: list[torch.Tensor | None] = []
        self.values: list[torch.Tensor | None] = []
        self.rows = 0
        self.capacity = 0
        self.pool = RowPool()  # row ids; free rows keep the tokens they hold (prefix_cache.py)

    # -- rows ------------------------------------------------------------------------------
    def alloc_row(self) -> int:
        """Lowest free row first, so live rows stay packed and decode runs stay long."""
        return self.pool.alloc()

    def claim_row(self, prompt_ids: Sequence[int], min_match: int = MIN_MATCH_TOKENS) -> Claim:
        """A row for ``prompt_ids``, its leading ``reused`` positions valid for them (prefix reuse);
        positions past those are overwritten by the prompt's prefill and never read before."""
        return self.pool.claim(prompt_ids, min_match)

    def free_row(self, row: int, tokens: Sequence[int] | None = None) -> None:
        """``tokens``: the ids whose keys/values the row holds, kept for reuse (None: nothing kept)."""
        self.pool.free(row, tokens)

    @property
    def live_rows(self) -> int:
        return self.pool.live_rows

    def reset(self) -> None:
        self.keys, self.values = [], []
        self.rows = self.capacity = 0
        self.pool = RowPool()

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)

    # -- memory ----------------------------------------------------------------------------
    def reserve(self, rows: int, positions: int) -> None:
        """Grow (by doubling) so ``rows`` rows of ``positions`` tokens fit; existing contents are kept."""
        if rows <= self.rows and positions <= self.capacity:
            return
        new_rows = _grow(rows, self.rows, self.max_rows) if rows > self.rows else self.rows
        new_cap = (
            _grow(positions, self.capacity, _round_up(self.max_positions + 1, DECODE_BUCKET))
            if positions > self.capacity
            else self.capacity
        )
        for buffers in (self.keys, self.values):
            for i, old in enumerate(buffers):
                if old is None:
                    continue
                grown = old.new_zeros((new_rows, old.shape[1], new_cap, old.shape[3]))
                grown[: old.shape[0], :, : old.shape[2]].copy_(old)
                buffers[i] = grown
        self.rows, self.capacity = new_rows, new_cap
        self.pool.spare_rows = new_rows  # rows with memory already: used before evicting held ones

    def layer(self, index: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's buffers, created on first use with the head count and size the model produced."""
        while len(self.keys) <= index:
            self.keys.append(None)
            self.values.append(None)
        if self.keys[index] is None:
            shape = (self.rows, like.shape[1], self.capacity, like.shape[3])
            self.keys[index] = like.new_zeros(shape)
            self.values[index] = like.new_zeros(shape)
        return self.keys[index], self.values[index]  # type: ignore[return-value]


@dataclass
class Segment:
    """Tokens of one sequence in this step: ``ids`` continue a row that already holds ``start`` tokens."""

    row: int
    ids: list[int]
    start: int
    logits: str = "last"  # "last", "all" or "none"


@dataclass
class _DecodeRun:
    q0: int
    q1: int
    row0: int
    row1: int
    kv_len: int
    mask: torch.Tensor  # [rows, 1, 1, kv_len], additive


@dataclass
class _PrefillPart:
    q0: int
    q1: int
    row: int
    kv_len: int
    mask: torch.Tensor | None


@dataclass
class StepPlan:
    """Everything the attention needs for one packed forward, computed once per step (not per layer)."""

    store: KVStore
    token_rows: torch.Tensor
    token_positions: torch.Tensor
    parts: list = field(default_factory=list)
    last_layer: int = 0
    _flat_slots: torch.Tensor | None = None
    # With the decode kernel (decode_attention.py): every one-token query's (token, row, length),
    # served by one kernel call per layer instead of ``_DecodeRun`` parts.
    decodes: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    # With the fused layer ops (csrc/layer_ops.cpp): keys are written by one op per layer, not two index_copy_.
    fused_writes: bool = False
    # Prompt chunks attend in float32 (rounded back): faster than bf16 on CPUs without AMX (executor.prompt_float32).
    prompt_attention_float32: bool = False

    def flat_slots(self, kv_heads: int, capacity: int) -> torch.Tensor:
        """Where each (token, kv head) lands in a layer buffer viewed as ``[rows * heads * capacity, D]``.

        One ``index_copy_`` per layer with these writes the step's keys; the equivalent advanced
        index assignment (``buf[rows, :, positions] = ...``) costs ~10x more on small decode steps
        under OMP_WAIT_POLICY=PASSIVE (it wakes the thread pool for a few kilobytes)."""
        if self._flat_slots is None:
            heads = torch.arange(kv_heads, device=self.token_rows.device)
            slots = (self.token_rows[:, None] * kv_heads + heads[None, :]) * capacity + self.token_positions[:, None]
            self._flat_slots = slots.reshape(-1)
        return self._flat_slots

    @classmethod
    def build(
        cls,
        store: KVStore,
        segments: list[Segment],
        dtype: torch.dtype,
        device: torch.device,
        invariant: bool = False,
        kernel: bool = False,
    ) -> StepPlan:
        """``kernel``: one-token queries go to the decode kernel (each reads its own row's length;
        batch invariant by construction). Otherwise SDPA: ``invariant`` makes one call per run of
        equal key-length buckets, so a sequence's attention never depends on its neighbours (exact,
        slower with mixed lengths); else consecutive rows share one call over the longest bucket
        (masked), which is what makes a mixed batch fast without the kernel."""
        rows: list[int] = []
        positions: list[int] = []
        parts: list = []
        q = 0
        neg = torch.finfo(dtype).min
        pending: list[tuple[int, int, int]] = []  # decode tokens waiting to be grouped: (q, row, length)
        decodes: list[tuple[int, int, int]] = []  # with the kernel: all of them, never grouped

        def flush_decodes() -> None:
            if kernel:
                decodes.extend(pending)
                pending.clear()
                return
            for i, j, bucket in _decode_runs(pending, invariant):
                lengths = torch.tensor([p[2] for p in pending[i:j]], device=device)
                cols = torch.arange(bucket, device=device)
                mask = torch.zeros((j - i, 1, 1, bucket), dtype=dtype, device=device)
                mask.masked_fill_((cols[None, :] >= lengths[:, None])[:, None, None, :], neg)
                parts.append(
                    _DecodeRun(pending[i][0], pending[j - 1][0] + 1, pending[i][1], pending[j - 1][1] + 1, bucket, mask)
                )
            pending.clear()

        for seg in segments:
            n = len(seg.ids)
            rows.extend([seg.row] * n)
            positions.extend(range(seg.start, seg.start + n))
            if n == 1:
                pending.append((q, seg.row, seg.start + 1))
            else:
                flush_decodes()
                kv_len = seg.start + n
                mask = None
                if seg.start > 0:  # a later chunk: causal with an offset, which SDPA's is_causal can't express
                    cols = torch.arange(kv_len, device=device)
                    allowed = cols[None, :] <= (torch.arange(n, device=device)[:, None] + seg.start)
                    mask = torch.zeros((1, 1, n, kv_len), dtype=dtype, device=device)
                    mask.masked_fill_(~allowed[None, None], neg)
                parts.append(_PrefillPart(q, q + n, seg.row, kv_len, mask))
            q += n
        flush_decodes()
        plan = cls(store, torch.tensor(rows, device=device), torch.tensor(positions, device=device), parts)
        if decodes:
            columns = torch.tensor(decodes, dtype=torch.int64, device=device).T
            plan.decodes = (columns[0].contiguous(), columns[1].contiguous(), columns[2].contiguous())
        return plan


# What one more SDPA call in ``attend`` costs (slicing, the call, the copy out), in units of one query
# row attending one more key: 23-30 us against ~0.037 us per row-key on this machine's two threads
# (bench/attention_runs.py, results/attention-runs-*.json).
DECODE_CALL_COST = 640


def _decode_runs(pending: list[tuple[int, int, int]], invariant: bool) -> list[tuple[int, int, int]]:
    """Split the step's decode tokens ``(q, row, length)`` into SDPA calls ``(i, j, bucket)`` over
    ``pending[i:j]``: each call covers consecutive rows (a strided view of their buffers) padded to
    its longest 64-token bucket. Padding is work (a 47-token row beside a 700-token one reads 704
    keys), a call is overhead; the split minimises ``calls * DECODE_CALL_COST + sum(rows * bucket)``
    exactly (a dynamic programme over the run boundaries, O(n^2) for n decode tokens). ``invariant``
    instead splits wherever the bucket changes, so a row's key length never depends on its neighbours."""
    n = len(pending)
    buckets = [_round_up(p[2], DECODE_BUCKET) for p in pending]

    def joins(a: int, b: int) -> bool:  # pending[b] may share pending[a]'s call
        return pending[b][1] == pending[a][1] + 1 and pending[b][0] == pending[a][0] + 1

    if invariant:
        runs, i = [], 0
        while i < n:
            j = i + 1
            while j < n and joins(j - 1, j) and buckets[j] == buckets[i]:
                j += 1
            runs.append((i, j, buckets[i]))
            i = j
        return runs
    best = [0] + [0] * n  # best[j]: cheapest split of pending[:j]
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        best[j], cut[j] = best[j - 1] + DECODE_CALL_COST + buckets[j - 1], j - 1
        widest = buckets[j - 1]
        for i in range(j - 2, -1, -1):
            if not joins(i, i + 1):
                break
            widest = max(widest, buckets[i])
            cost = best[i] + DECODE_CALL_COST + (j - i) * widest
            if cost < best[j]:
                best[j], cut[j] = cost, i
    runs = []
    j = n
    while j > 0:
        i = cut[j]
        runs.append((i, j, max(buckets[i:j])))
        j = i
    return runs[::-1]


def write_step_keys(plan: StepPlan, layer: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
    """Store this step's keys/values ``[1, KV, T, D]`` in their rows (tokens past the plan's are padding)."""
    keys, values = plan.store.layer(layer, key_states)
    kv_heads, capacity, dim = keys.shape[1], keys.shape[2], keys.shape[3]
    slots = plan.flat_slots(kv_heads, capacity)
    n = plan.token_rows.shape[0]
    keys.view(-1, dim).index_copy_(0, slots, key_states[0, :, :n].transpose(0, 1).reshape(-1, dim))
    values.view(-1, dim).index_copy_(0, slots, value_states[0, :, :n].transpose(0, 1).reshape(-1, dim))


def write_token_keys(plan: StepPlan, layer: int, keys_tkd: torch.Tensor, values_tkd: torch.Tensor) -> None:
    """As ``write_step_keys`` for keys/values laid out ``[T, KV, D]`` (token-major, as the lean forward
    makes them): the flat slots are in (token, head) order, so no transpose is needed."""
    like = keys_tkd.transpose(0, 1)[None]  # [1, KV, T, D]: the store sizes a new layer from it
    keys, values = plan.store.layer(layer, like)
    if plan.fused_writes:
        torch.ops.streamhost_layer.write_kv(keys, values, keys_tkd, values_tkd, plan.token_rows, plan.token_positions)
        return
    kv_heads, capacity, dim = keys.shape[1], keys.shape[2], keys.shape[3]
    slots = plan.flat_slots(kv_heads, capacity)
    keys.view(-1, dim).index_copy_(0, slots, keys_tkd.reshape(-1, dim))
    values.view(-1, dim).index_copy_(0, slots, values_tkd.reshape(-1, dim))


class _PackedLayer(CacheLayerMixin):
    """Writes this step's new keys/values into their rows; attention then reads the rows."""

    is_sliding = False

    def __init__(self, plan: StepPlan, index: int) -> None:
        super().__init__()
        self.plan, self.index = plan, index
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:  # pragma: no cover
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        write_step_keys(self.plan, self.index, key_states, value_states)
        self.plan.last_layer = self.index
        return key_states, value_states

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return query_length, 0

    def get_seq_length(self) -> int:
        return 0

    def get_max_length(self) -> int:
        return -1


class PackedStepCache(Cache):
    """The transformers ``Cache`` for one packed step; a fresh one per step is cheap."""

    def __init__(self, plan: StepPlan, num_layers: int) -> None:
        super().__init__(layers=[_PackedLayer(plan, i) for i in range(num_layers)])


def packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention for a packed step (see module docstring); plain SDPA when no plan is given."""
    plan: StepPlan | None = kwargs.pop("streamhost_plan", None)
    if kwargs.pop("streamhost_compiled", False):  # traced by torch.compile: the plan stays outside the graph
        scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
        return torch.ops.streamhost.packed_attention(query, key, value, scale), None
    if plan is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    layer = getattr(module, "layer_idx", plan.last_layer)
    return attend(plan, layer, query, scaling), None


def attend(plan: StepPlan, layer: int, query: torch.Tensor, scaling: float | None) -> torch.Tensor:
    """``query [1, H, T, D]`` of this step's tokens against their rows of ``layer``; returns ``[1, T, H, D]``.

    Rows past the plan's tokens (a compiled step's padding, see compiled_step.py) come back zero."""
    keys, values = plan.store.keys[layer], plan.store.values[layer]
    assert keys is not None and values is not None, "the step's keys are written before attention"
    gqa = query.shape[1] != keys.shape[1]
    shape = (query.shape[0], query.shape[2], query.shape[1], query.shape[3])  # [1, T, H, D]
    padded = query.shape[2] > plan.token_rows.shape[0]
    out = query.new_zeros(shape) if padded else query.new_empty(shape)
    if plan.decodes is not None:
        tokens, rows, lengths = plan.decodes
        q_thd = query[0].transpose(0, 1)  # [T, H, D]
        if q_thd.stride(-1) != 1:
            q_thd = q_thd.contiguous()
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        decode_attention(out[0], q_thd, keys, values, tokens, rows, lengths, scale)
    for part in plan.parts:
        if isinstance(part, _DecodeRun):
            q = query[0, :, part.q0 : part.q1].transpose(0, 1)  # [n, H, D]
            k = keys[part.row0 : part.row1, :, : part.kv_len]
            v = values[part.row0 : part.row1, :, : part.kv_len]
            o = F.scaled_dot_product_attention(q.unsqueeze(2), k, v, attn_mask=part.mask, scale=scaling, enable_gqa=gqa)
            out[0, part.q0 : part.q1] = o[:, :, 0]
        else:
            q = query[:, :, part.q0 : part.q1]  # [1, H, n, D]
            k = keys[part.row : part.row + 1, :, : part.kv_len]
            v = values[part.row : part.row + 1, :, : part.kv_len]
            mask = part.mask
            if plan.prompt_attention_float32:
                q, k, v = q.float(), k.float(), v.float()
                mask = None if mask is None else mask.float()
            o = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                is_causal=mask is None,
                scale=scaling,
                enable_gqa=gqa,
            )
            out[0, part.q0 : part.q1] = o[0].transpose(0, 1)
    return out


def register_attention() -> str:
    """Make ``packed_attention`` selectable by name in transformers (idempotent).

    No mask function is registered on purpose: transformers then skips building a causal mask for
    the packed row (it would be ``T x T`` and unused); the plan carries the masks attention needs.
    """
    AttentionInterface.register(ATTENTION_NAME, packed_attention)
    return ATTENTION_NAME


class _CompiledStepContext:
    """The plan of the compiled step now running (engine thread only) and the next layer to attend.

    A compiled graph cannot carry the plan (a Python object that changes every step), so, as vLLM's
    forward context does, the step sets it here and the opaque attention op below reads it; the op
    runs once per decoder layer, in order, which is how it knows its layer without a constant that
    would specialise (and recompile) the graph per layer."""

    def __init__(self) -> None:
        self.plan: StepPlan | None = None
        self.layer = 0

    def begin(self, plan: StepPlan) -> None:
        self.plan, self.layer = plan, 0

    def end(self) -> None:
        self.plan = None


COMPILED_STEP = _CompiledStepContext()


# cudagraph_unsafe: on a GPU, inductor's graph partitioning keeps this op out of the CUDA graphs
# (it reads a different plan every step), so "reduce-overhead" captures the pieces between layers.
@torch.library.custom_op("streamhost::packed_attention", mutates_args=(), tags=(torch._C.Tag.cudagraph_unsafe,))
def _packed_attention_op(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float) -> torch.Tensor:
    """Write this layer's keys/values and attend (``[1, H, T, D]`` in, ``[1, T, H, D]`` out); opaque to
    torch.compile, which compiles everything around it."""
    plan = COMPILED_STEP.plan
    if plan is None:
        raise RuntimeError("streamhost::packed_attention called outside a compiled step")
    layer = COMPILED_STEP.layer
    COMPILED_STEP.layer += 1
    write_step_keys(plan, layer, key, value)
    return attend(plan, layer, query, scaling)


@_packed_attention_op.register_fake
def _(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float) -> torch.Tensor:
    return query.new_empty((query.shape[0], query.shape[2], query.shape[1], query.shape[3]))
