"""The lean layer's fused CPU ops (csrc/layer_ops.cpp): each gives what the torch expression it
replaces gives, rounding for rounding, in the model's dtype; the KV write lands where
``index_copy_`` puts it; and through the executor the greedy answers do not change."""

from __future__ import annotations

import pytest
import torch

from streamhost.engine import decode_attention as kernels
from streamhost.engine.kv_cache import KVStore, Segment, StepPlan, write_token_keys
from streamhost.engine.lean_llama import FusedLayerOps, TorchLayerOps
from streamhost.testing import greedy_decode_together


@pytest.fixture(scope="module", autouse=True)
def library() -> None:
    assert kernels.load_layer_ops(), "the ops must build on this machine (make install builds them)"


def _ulps_apart(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance in representable steps (same-sign values of one dtype)."""
    as_int = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}[a.dtype]
    return int((a.view(as_int).int() - b.view(as_int).int()).abs().max())


def _assert_norms_agree(got: torch.Tensor, expected: torch.Tensor) -> None:
    if got.dtype == torch.float32:
        assert _ulps_apart(got.abs(), expected.abs()) <= 4
    else:
        assert _ulps_apart(got.abs(), expected.abs()) <= 2 and (got == expected).float().mean() > 0.99


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("tokens", [1, 16, 300])
def test_each_op_gives_the_torch_expression(dtype: torch.dtype, tokens: int) -> None:
    torch.manual_seed(tokens)
    hidden, heads, kv_heads, dim, inter = 576, 9, 3, 64, 1536
    h = torch.randn(tokens, hidden).to(dtype)
    delta = torch.randn(tokens, hidden).to(dtype)
    weight = (torch.rand(hidden) + 0.5).to(dtype)
    # norms: float32 sums in another order move a float32 result by a few steps, and, rarely, a
    # 16-bit one by a step before the weight's product rounds it again
    expected, got = TorchLayerOps.rms_norm(h, weight, 1e-5), FusedLayerOps.rms_norm(h, weight, 1e-5)
    assert got.dtype == dtype and got.shape == expected.shape
    _assert_norms_agree(got, expected)
    (sum_expected, norm_expected), (sum_got, norm_got) = (
        TorchLayerOps.add_rms_norm(h, delta, weight, 1e-5),
        FusedLayerOps.add_rms_norm(h, delta, weight, 1e-5),
    )
    assert torch.equal(sum_got, sum_expected)
    _assert_norms_agree(norm_got, norm_expected)
    # rotary: in place on q and k of the qkv rows, v untouched
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim).to(dtype)
    cos, sin = torch.randn(tokens, 1, dim).to(dtype), torch.randn(tokens, 1, dim).to(dtype)
    q_expected, k_expected = TorchLayerOps.rotate_qk(qkv, cos, sin, heads, kv_heads, dim)
    rotated = qkv.clone()
    q_got, k_got = FusedLayerOps.rotate_qk(rotated, cos, sin, heads, kv_heads, dim)
    assert torch.equal(q_got, q_expected) and torch.equal(k_got, k_expected)
    assert q_got.data_ptr() == rotated.data_ptr()
    assert torch.equal(rotated[:, (heads + kv_heads) * dim :], qkv[:, (heads + kv_heads) * dim :])
    # SiLU times up: float32 may differ in its last bits (another exp), the 16-bit types not at all
    gate_up = torch.randn(tokens, 2 * inter).to(dtype)
    expected, got = TorchLayerOps.silu_mul(gate_up, inter), FusedLayerOps.silu_mul(gate_up, inter)
    if dtype == torch.float32:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(got, expected)


def test_fused_key_writes_land_where_index_copy_puts_them() -> None:
    torch.manual_seed(0)
    segments = [Segment(0, [1, 2, 3], 0), Segment(2, [4], 40), Segment(1, [5], 7)]
    stores = []
    for fused in (False, True):
        store = KVStore(max_rows=4, max_positions=128)
        store.reserve(3, 64)
        plan = StepPlan.build(store, segments, torch.bfloat16, torch.device("cpu"), kernel=True)
        plan.fused_writes = fused
        torch.manual_seed(1)
        qkv = torch.randn(5, 9 * 32).bfloat16()  # keys and values as column slices, as the lean layer makes them
        keys, values = qkv[:, 3 * 32 : 6 * 32].view(5, 3, 32), qkv[:, 6 * 32 :].view(5, 3, 32)
        write_token_keys(plan, 0, keys, values)
        stores.append(store)
    plain, fused_store = stores
    assert torch.equal(plain.keys[0], fused_store.keys[0]) and torch.equal(plain.values[0], fused_store.values[0])
    assert fused_store.keys[0][2, :, 40].abs().sum() > 0  # the decode token's keys are where its row reads them


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_greedy_answers_are_the_same_with_and_without_the_fused_ops(tiny_llama_dir, dtype: str) -> None:
    from streamhost.engine.executor import TorchExecutor

    answers = []
    for fused in (True, False):
        executor = TorchExecutor(tiny_llama_dir, dtype=dtype, layer_ops=fused)
        assert executor.layer_ops is fused and executor.describe()["layer_ops"] == ("fused" if fused else "torch")
        prompts = [[5, 6, 7], list(range(10, 90)), [42] * 30]
        answers.append(greedy_decode_together(executor, prompts, 24))
    assert answers[0] == answers[1]


def test_the_environment_turns_them_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kernels.LAYER_OPS_ENV, "0")
    assert kernels.load_layer_ops() is False


def test_prompt_float32_follows_the_cpu_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamhost.engine import executor as executor_module

    cpu = torch.device("cpu")
    monkeypatch.delenv(executor_module.PROMPT_FLOAT32_ENV, raising=False)
    monkeypatch.setattr(executor_module, "has_amx", lambda: False)
    assert executor_module.prompt_float32(cpu, torch.bfloat16) is True
    assert executor_module.prompt_float32(cpu, torch.float32) is False  # nothing to widen
    monkeypatch.setattr(executor_module, "has_amx", lambda: True)  # AMX tiles: bf16 is the faster
    assert executor_module.prompt_float32(cpu, torch.bfloat16) is False
    monkeypatch.setenv(executor_module.PROMPT_FLOAT32_ENV, "1")
    assert executor_module.prompt_float32(cpu, torch.bfloat16) is True
    monkeypatch.setenv(executor_module.PROMPT_FLOAT32_ENV, "0")
    monkeypatch.setattr(executor_module, "has_amx", lambda: False)
    assert executor_module.prompt_float32(cpu, torch.bfloat16) is False


def test_prompt_work_in_float32_keeps_the_greedy_answers(tiny_llama_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prompt past WIDE_STEP_ROWS (its GEMMs widened) and short ones (attention widened), bf16."""
    from streamhost.engine.executor import PROMPT_FLOAT32_ENV, TorchExecutor
    from streamhost.engine.lean_llama import WIDE_STEP_ROWS

    answers = []
    for widened in ("1", "0"):
        monkeypatch.setenv(PROMPT_FLOAT32_ENV, widened)
        executor = TorchExecutor(tiny_llama_dir, dtype="bf16")
        assert executor.describe()["prompt_float32"] is (widened == "1")
        prompts = [[(7 * i) % 500 + 3 for i in range(WIDE_STEP_ROWS + 40)], [5, 6, 7], [42] * 30]
        answers.append(greedy_decode_together(executor, prompts, 12))
    assert answers[0] == answers[1]
