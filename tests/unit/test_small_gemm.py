"""Our small-row bf16 GEMM (csrc/small_gemm.cpp): the packed weight holds the same numbers, the
product is the exact float32 one rounded once to bf16 (up to the order of the float32 sums) for any
row count and any column count that is a multiple of 16, bias included; through the executor the
greedy answers do not change. Skipped where the CPU has no AVX512-BF16 (the kernel is not built for it)."""

from __future__ import annotations

import pytest
import torch

from streamhost.engine import decode_attention as kernels
from streamhost.testing import greedy_decode_together


@pytest.fixture(scope="module", autouse=True)
def library() -> None:
    assert kernels.load_library(), "the CPU kernels must build on this machine (make install builds them)"
    if not torch.ops.streamhost_gemm.supported():
        pytest.skip("this CPU has no AVX512-BF16")


def _assert_rounded_once(got: torch.Tensor, exact: torch.Tensor) -> None:
    """Each value within half a bf16 step of the exact one (rounding), plus float32 sums' own error."""
    slack = exact.abs() * 2**-8 + exact.abs().max() * 1e-5
    assert got.dtype == torch.bfloat16 and bool(((got.float() - exact).abs() <= slack).all())


def test_packing_keeps_every_weight() -> None:
    weight = torch.randn(112, 66).bfloat16()
    packed = torch.ops.streamhost_gemm.pack(weight)
    assert packed.shape == (7, 33, 16, 2)
    assert torch.equal(torch.ops.streamhost_gemm.unpack_float(packed), weight.float())


@pytest.mark.parametrize("rows", [1, 3, 8, 9, 16, 37])
@pytest.mark.parametrize(("out_features", "in_features"), [(112, 66), (960, 576), (576, 1536)])
def test_the_product_is_the_float32_one_rounded_once(rows: int, out_features: int, in_features: int) -> None:
    torch.manual_seed(rows)
    x = torch.randn(rows, in_features).bfloat16()
    weight = torch.randn(out_features, in_features).bfloat16()
    bias = torch.randn(out_features).bfloat16()
    packed = torch.ops.streamhost_gemm.pack(weight)
    exact = (x.double() @ weight.double().T + bias.double()).float()
    got = torch.ops.streamhost_gemm.small_gemm(x, packed, bias)
    assert got.shape == (rows, out_features)
    _assert_rounded_once(got, exact)
    without_bias = torch.ops.streamhost_gemm.small_gemm(x, packed, None)
    _assert_rounded_once(without_bias, (x.double() @ weight.double().T).float())


def test_a_fused_linear_takes_rows_of_any_rank() -> None:
    """Beam search's ``generate`` runs the rewired transformers modules on ``[batch, tokens, in]``."""
    from streamhost.engine.lean_llama import FusedLinear

    weight = torch.randn(96, 64).bfloat16()
    layer = FusedLinear(weight, None, small_gemm=True)
    assert layer.small and not layer.packed
    x = torch.randn(2, 5, 64).bfloat16()
    _assert_rounded_once(layer(x), (x.double() @ weight.double().T).float())


def test_a_fused_linear_with_a_bias_parameter_adds_it() -> None:
    """Qwen2's q/k/v carry biases (nn.Parameter, bf16): the small-row layer adds them exactly."""
    from streamhost.engine.lean_llama import FusedLinear

    weight = torch.randn(48, 64).bfloat16()
    bias = torch.nn.Parameter(torch.randn(48).bfloat16(), requires_grad=False)
    layer = FusedLinear(weight, bias, small_gemm=True)
    assert layer.small
    x = torch.randn(3, 64).bfloat16()
    _assert_rounded_once(layer(x), (x.double() @ weight.double().T + bias.double()).float())


def test_greedy_answers_are_the_same_with_and_without_it(tiny_llama_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamhost.engine import executor as executor_module
    from streamhost.engine.executor import TorchExecutor

    monkeypatch.setattr(executor_module, "has_amx", lambda: False)  # where AMX exists oneDNN is chosen
    answers = []
    for small in (True, False):
        executor = TorchExecutor(tiny_llama_dir, dtype="bf16", small_gemm=small)
        assert executor.describe()["gemm"] == ("small-row" if small else "onednn")
        prompts = [[5, 6, 7], list(range(10, 90)), [42] * 30]
        answers.append(greedy_decode_together(executor, prompts, 16))
    assert answers[0] == answers[1]


def test_the_environment_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamhost.engine import executor as executor_module

    monkeypatch.setattr(executor_module, "has_amx", lambda: False)
    assert executor_module.small_gemm_applies(torch.device("cpu"), torch.bfloat16) is True
    assert executor_module.small_gemm_applies(torch.device("cpu"), torch.float32) is False
    monkeypatch.setenv(executor_module.SMALL_GEMM_ENV, "0")
    assert executor_module.small_gemm_applies(torch.device("cpu"), torch.bfloat16) is False
