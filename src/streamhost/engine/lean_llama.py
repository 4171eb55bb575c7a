"""Our own forward for Llama-family decoders (Llama, Mistral, Qwen2, SmolLM): fewer, faster GEMMs.

transformers' forward runs seven linear layers per decoder layer through plain ``addmm`` on
weights in their checkpoint layout, plus a module call and a few shape shuffles around each; on a
CPU, for a 135M model, that made the linear layers half of a decode step and Python/dispatch
another eighth (bench/step_profile.py). This forward computes the same function with:

* **fused projections**: q, k and v as one linear layer, gate and up as another (7 GEMMs per layer
  become 4), concatenated once at load;
* **prepacked weights** on CPU: oneDNN's blocked layout (``mkldnn._reorder_linear_weight``), which
  runs the bf16 GEMMs on AMX / AVX512-BF16 kernels without reordering the weight every call
  (inductor's ``freezing`` does the same for compiled graphs); measured 1.4x faster than ``addmm``
  over the 210 linear layers of SmolLM2-135M at 1 and 16 tokens;
* tokens as ``[T, hidden]`` rows end to end and our packed attention (kv_cache.attend) called
  directly, with no transformers ``Cache`` or attention-interface hops.

The arithmetic follows transformers' Llama modules op for op (RMSNorm in float32, rotary from the
model's own rotary module, so every rope scaling type it supports works, softmax in float32), so
greedy tokens match transformers'. The transformers model stays the fallback for any other
architecture (``unsupported_reason``) and keeps serving beam search (``generate``); its projection
modules are rewired onto the fused weights so the weights are held once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeAlias

import torch
import torch.nn.functional as F
from torch import nn

from streamhost.engine.kv_cache import StepPlan, attend, write_token_keys

if TYPE_CHECKING:
    from streamhost.engine.lean_compiled import LeanCompiled

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


def unsupported_reason(model: Any) -> str | None:
    """Why the lean forward cannot run ``model`` (None when it can)."""
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"architecture {model_type!r} is not one of {', '.join(SUPPORTED_MODEL_TYPES)}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} (only silu)"
    window = getattr(config, "sliding_window", None)
    uses_window = getattr(config, "use_sliding_window", model_type == "mistral")
    if window and uses_window and window < (getattr(config, "max_position_embeddings", 0) or 0):
        return f"sliding-window attention ({window} tokens)"
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp > 1"
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if base is None or not layers or getattr(model, "lm_head", None) is None:
        return "unexpected module layout"
    first = layers[0]
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                 "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm"):  # fmt: skip
        if _get(first, name) is None:
            return f"decoder layer has no {name}"
    if getattr(first.self_attn, "q_norm", None) is not None:
        return "q/k norms (Qwen3-style)"
    return None


def _get(module: nn.Module, dotted: str) -> nn.Module | None:
    for part in dotted.split("."):
        module = getattr(module, part, None)  # type: ignore[assignment]
        if module is None:
            return None
    return module


class FusedLinear(nn.Module):
    """One linear layer over concatenated weights; on CPU the weight is prepacked, for oneDNN or,
    with ``small_gemm`` (a CPU with AVX512-BF16 and no AMX), for our small-row GEMM (csrc/small_gemm.cpp).

    Bias optional. Call it on ``[..., in]`` rows."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, small_gemm: bool = False) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        on_cpu = weight.device.type == "cpu"
        shape_fits = self.out_features % 16 == 0 and self.in_features % 2 == 0
        self.small = small_gemm and on_cpu and weight.dtype == torch.bfloat16 and shape_fits
        self.packed = not self.small and on_cpu and _mkldnn_handles(weight.dtype)
        # the small-row kernel adds the bias to float32 sums: widened once here, not in every step
        self.bias = bias.detach().float() if self.small and bias is not None else bias
        if self.small:  # [N/16, K/2, 16, 2]: the operand layout of vdpbf16ps
            self.weight = torch.ops.streamhost_gemm.pack(weight.detach())
        elif self.packed:
            # batch_size is only a hint for the blocking; the packed weight serves any row count
            self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1)
        else:
            self.weight = weight.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.out_features)


class _Slice(nn.Module):
    """Stands in for one of the fused projections inside the transformers model (beam search's
    ``generate`` still runs it): computes the fused layer and keeps its columns."""

    def __init__(self, fused: FusedLinear, start: int, stop: int) -> None:
        super().__init__()
        self.fused, self.start, self.stop = [fused], start, stop  # a list: not a registered submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused[0](x)[..., self.start : self.stop]


def _mkldnn_handles(dtype: torch.dtype) -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return dtype == torch.float32


def _fuse(*linears: nn.Linear, small_gemm: bool = False) -> FusedLinear:
    weight = torch.cat([lin.weight.detach() for lin in linears], dim=0)
    biases = [lin.bias for lin in linears]
    bias = None
    if any(b is not None for b in biases):
        bias = torch.cat(
            [b.detach() if b is not None else lin.weight.new_zeros(lin.out_features) for b, lin in zip(biases, linears)]
        )
    return FusedLinear(weight, bias, small_gemm)


_Bias: TypeAlias = torch.Tensor | None
# decoder_layer's weights, in its order: ln1, qkv (weight, bias), o, ln2, gate_up, down
LayerTensors: TypeAlias = tuple[
    torch.Tensor, torch.Tensor, _Bias, torch.Tensor, _Bias, torch.Tensor, torch.Tensor, _Bias, torch.Tensor, _Bias
]


class _Layer:
    __slots__ = ("ln1", "ln2", "eps1", "eps2", "qkv", "o", "gate_up", "down", "scaling")
    ln1: torch.Tensor  # the norms' weights, set by LeanLlama once the model owns its tensors
    ln2: torch.Tensor

    def __init__(self, layer: Any, small_gemm: bool = False) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.eps1 = float(layer.input_layernorm.variance_epsilon)
        self.eps2 = float(layer.post_attention_layernorm.variance_epsilon)
        self.qkv = _fuse(attn.q_proj, attn.k_proj, attn.v_proj, small_gemm=small_gemm)
        self.o = FusedLinear(attn.o_proj.weight, attn.o_proj.bias, small_gemm)
        self.gate_up = _fuse(mlp.gate_proj, mlp.up_proj, small_gemm=small_gemm)
        self.down = FusedLinear(mlp.down_proj.weight, mlp.down_proj.bias, small_gemm)
        self.scaling = float(attn.scaling)
        # the transformers modules now read the fused weights (one copy in memory)
        q, k = attn.q_proj.out_features, attn.k_proj.out_features
        attn.q_proj, attn.k_proj, attn.v_proj = (
            _Slice(self.qkv, 0, q),
            _Slice(self.qkv, q, q + k),
            _Slice(self.qkv, q + k, self.qkv.out_features),
        )
        attn.o_proj = self.o
        inter = mlp.gate_proj.out_features
        mlp.gate_proj, mlp.up_proj = _Slice(self.gate_up, 0, inter), _Slice(self.gate_up, inter, 2 * inter)
        mlp.down_proj = self.down

    def tensors(self) -> LayerTensors:
        """The layer's weights in ``decoder_layer``'s order (norm, then weight and bias of each GEMM)."""
        return (
            self.ln1, self.qkv.weight, self.qkv.bias, self.o.weight, self.o.bias,
            self.ln2, self.gate_up.weight, self.gate_up.bias, self.down.weight, self.down.bias,
        )  # fmt: skip


class LeanLlama:
    """The packed step's forward for a Llama-family model: ``forward(ids, plan, keep) -> logits``."""

    def __init__(self, model: Any, small_gemm: bool = False) -> None:
        """``small_gemm``: pack the weights for csrc/small_gemm.cpp (the caller checked it applies)."""
        why_not = unsupported_reason(model)
        if why_not:
            raise ValueError(f"lean forward unsupported: {why_not}")
        config = model.config
        base = model.model
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.rotary: Callable[..., tuple[torch.Tensor, torch.Tensor]] = base.rotary_emb
        self.layers = [_Layer(layer, small_gemm) for layer in base.layers[: config.num_hidden_layers]]
        self.norm_eps = float(base.norm.variance_epsilon)
        self.compiled: LeanCompiled | None = None  # lean_compiled.py sets it when the layer is compiled
        # the eager layer's element-wise work: torch's ops, or our fused ones (use_fused_ops)
        self.ops: type[TorchLayerOps] = TorchLayerOps
        # prompt-sized steps' GEMMs in float32 (linear_float32): set where bf16 dot products are the slower
        self.wide_gemm_float32 = False
        self.lm_head = FusedLinear(model.lm_head.weight, getattr(model.lm_head, "bias", None), small_gemm)
        model.lm_head = self.lm_head  # generate() reads the packed copy too; a tied embedding keeps its own
        _own_remaining_tensors(model)
        # read what stays in the transformers modules only now: the copy above replaced its storage
        self.embed = base.embed_tokens.weight.detach()
        self.norm = base.norm.weight.detach()
        for lean_layer, layer in zip(self.layers, base.layers):
            lean_layer.ln1 = layer.input_layernorm.weight.detach()
            lean_layer.ln2 = layer.post_attention_layernorm.weight.detach()

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, plan: StepPlan, keep: torch.Tensor | None) -> torch.Tensor | None:
        """``ids [T]`` of a packed step (positions and rows in ``plan``); logits ``[len(keep), V]``
        of the kept token indices, or None when none is kept."""
        h = F.embedding(ids, self.embed)  # [T, hidden]
        cos, sin = self.rotary(h[None], plan.token_positions[None])
        cos, sin = cos[0, :, None, :], sin[0, :, None, :]  # [T, 1, D]: broadcast over heads
        half = self.head_dim // 2
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)  # rotate_half's sign, once per step
        if self.compiled is not None and self.compiled.handles(h.shape[0]):
            h = self.compiled.run(self, h, cos, sin, plan)
        else:
            gemm = linear_float32 if self.wide_gemm_float32 and h.shape[0] >= WIDE_STEP_ROWS else linear
            for index, layer in enumerate(self.layers):
                attention = partial(_attend_eager, plan, index)
                h = decoder_layer(
                    h, cos, sin, *layer.tensors(), *self.layer_constants(layer), attention, gemm, self.ops
                )
        if keep is None:
            return None
        return self.lm_head(_rms_norm(h.index_select(0, keep), self.norm, self.norm_eps))

    def use_fused_ops(self) -> None:
        """Run the eager layer's norms, rotary, SiLU-times-up and residual adds as our fused CPU ops
        (csrc/layer_ops.cpp, loaded by the caller); the compiled layer keeps torch's, which inductor fuses."""
        self.ops = FusedLayerOps

    def layer_constants(self, layer: _Layer) -> tuple[int, int, int, int, float, float, float]:
        """The per-layer numbers ``decoder_layer`` takes (equal for every layer of a model, so one
        compiled graph serves them all)."""
        inter = layer.down.in_features
        return self.heads, self.kv_heads, self.head_dim, inter, layer.eps1, layer.eps2, layer.scaling


def _attend_eager(
    plan: StepPlan, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float
) -> torch.Tensor:
    """The eager forward's attention: write the layer's keys, attend (``[1, T, H, D]`` out)."""
    write_token_keys(plan, layer, k, v)
    return attend(plan, layer, q.transpose(0, 1)[None], scaling)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    """A FusedLinear's arithmetic on its tensors: oneDNN's prepacked GEMM, our small-row GEMM
    (a 4-d packed weight), or ``F.linear``."""
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    if weight.dim() == 4:
        rows = x.reshape(-1, x.shape[-1])
        if rows.stride(-1) != 1 or rows.stride(0) % 2:
            rows = rows.contiguous()
        return torch.ops.streamhost_gemm.small_gemm(rows, weight, bias).view(*x.shape[:-1], out_features)
    return F.linear(x, weight, bias)


# Steps of at least this many tokens run linear_float32 where LeanLlama.wide_gemm_float32 is set:
# below it, widening the weights costs about what the float32 GEMM saves (bench/prefill_profile.py).
WIDE_STEP_ROWS = 256


def linear_float32(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    """``linear`` computed in float32 and rounded once to ``x``'s dtype, as the bf16 GEMM rounds its
    float32 sums. Why: without AMX, a CPU's bf16 dot products (AVX512-BF16) peak lower than its
    float32 FMAs (here ~170 against ~310 GFLOPS at 1,024 rows), so a prompt's GEMMs run 1.5-1.8x
    faster widened, weights included (~1.5 ms per layer to widen, nothing kept)."""
    if weight.is_mkldnn:
        dense = weight.to_dense(torch.float32)
    elif weight.dim() == 4:
        dense = torch.ops.streamhost_gemm.unpack_float(weight)
    else:
        dense = weight.float()
    return F.linear(x.float(), dense, None if bias is None else bias.float()).to(x.dtype)


Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]
Linear = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, int], torch.Tensor]


def decoder_layer(
    h: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    ln1: torch.Tensor,
    qkv_w: torch.Tensor,
    qkv_b: torch.Tensor | None,
    o_w: torch.Tensor,
    o_b: torch.Tensor | None,
    ln2: torch.Tensor,
    gate_up_w: torch.Tensor,
    gate_up_b: torch.Tensor | None,
    down_w: torch.Tensor,
    down_b: torch.Tensor | None,
    heads: int,
    kv_heads: int,
    dim: int,
    inter: int,
    eps1: float,
    eps2: float,
    scaling: float,
    attention: Attention,
    linear: Linear,
    ops: type[TorchLayerOps] | None = None,
) -> torch.Tensor:
    """One Llama decoder layer on ``h [T, hidden]``: a pure function of tensors and numbers, so the
    eager forward and the compiled one (lean_compiled.py, where inductor fuses the norms, rotary,
    SiLU-times-up and residual adds around the opaque GEMMs and attention) run the same code.
    ``attention(q [T, H, D], k, v [T, KV, D], scaling)`` writes the keys and attends; its result is
    read as ``[T, H * D]`` (the eager one returns ``[1, T, H, D]``, the compiled op ``[T, H * D]``).
    ``ops``: the element-wise work (torch's ops by default; FusedLayerOps in the eager CPU forward)."""
    ops = ops or TorchLayerOps
    t = h.shape[0]
    q_width, kv_width = heads * dim, kv_heads * dim
    hidden = h.shape[1]
    x = ops.rms_norm(h, ln1, eps1)
    qkv = linear(x, qkv_w, qkv_b, q_width + 2 * kv_width)
    q, k = ops.rotate_qk(qkv, cos, sin, heads, kv_heads, dim)
    v = qkv[:, q_width + kv_width :].view(t, kv_heads, dim)
    a = attention(q, k, v, scaling)
    h, x = ops.add_rms_norm(h, linear(a.view(t, q_width), o_w, o_b, hidden), ln2, eps2)
    gate_up = linear(x, gate_up_w, gate_up_b, 2 * inter)
    return h + linear(ops.silu_mul(gate_up, inter), down_w, down_b, hidden)


class TorchLayerOps:
    """The layer's element-wise work as torch expressions (transformers' Llama modules' arithmetic)."""

    @staticmethod
    def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return _rms_norm(x, weight, eps)

    @staticmethod
    def add_rms_norm(
        h: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual add, then the next norm: ``(h + delta, rms_norm(h + delta))``."""
        h = h + delta
        return h, _rms_norm(h, weight, eps)

    @staticmethod
    def rotate_qk(
        qkv: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, heads: int, kv_heads: int, dim: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary embedding of q and k (the first ``heads + kv_heads`` heads of each qkv row), at once."""
        qk = _rotate(qkv[:, : (heads + kv_heads) * dim].view(qkv.shape[0], heads + kv_heads, dim), cos, signed_sin)
        return qk[:, :heads], qk[:, heads:]

    @staticmethod
    def silu_mul(gate_up: torch.Tensor, inter: int) -> torch.Tensor:
        return F.silu(gate_up[:, :inter]) * gate_up[:, inter:]


class FusedLayerOps(TorchLayerOps):
    """The same arithmetic and roundings in one op each (csrc/layer_ops.cpp): a decode step's layer
    runs a dozen ops instead of ~25, and no OpenMP region for a few rows."""

    @staticmethod
    def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return torch.ops.streamhost_layer.rms_norm(x, weight, eps)

    @staticmethod
    def add_rms_norm(
        h: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ops.streamhost_layer.add_rms_norm(h, delta, weight, eps)

    @staticmethod
    def rotate_qk(
        qkv: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, heads: int, kv_heads: int, dim: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """In place: q and k stay views of ``qkv``."""
        t = qkv.shape[0]
        torch.ops.streamhost_layer.rotary_(qkv, cos.reshape(t, dim), signed_sin.reshape(t, dim), heads + kv_heads)
        q = qkv[:, : heads * dim].view(t, heads, dim)
        return q, qkv[:, heads * dim : (heads + kv_heads) * dim].view(t, kv_heads, dim)

    @staticmethod
    def silu_mul(gate_up: torch.Tensor, inter: int) -> torch.Tensor:
        return torch.ops.streamhost_layer.silu_mul(gate_up)


def _own_remaining_tensors(model: nn.Module) -> None:
    """Copy the parameters the packed weights did not replace (embedding, norms) into memory of
    their own. transformers loads a checkpoint as views of the memory-mapped safetensors file;
    while any view lives, the whole mapping stays resident, so the replaced projections' pages
    would still count once packing has read them (SmolLM2-135M, RSS after load: 935 MB with the
    mapping kept, 711 MB without; transformers' forward reaches about the same once a request has
    paged its weights in)."""
    with torch.no_grad():
        for module in model.modules():
            for param in list(module.parameters(recurse=False)):
                param.data = param.data.clone()
            for name, buffer in list(module.named_buffers(recurse=False)):
                if buffer is not None:
                    setattr(module, name, buffer.clone())


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm: normalise in float32, scale in the model's dtype."""
    return weight * F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """transformers' ``x * cos + rotate_half(x) * sin`` with rotate_half's negation moved into
    ``signed_sin`` (``[-sin1, sin2]``), so a roll does the rest: the same values, half the ops."""
    return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * signed_sin
