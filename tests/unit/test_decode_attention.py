"""The CPU decode-attention kernel (engine/decode_attention.py): it builds here, gives what SDPA
gives for every one-token query against its own row, never depends on the other rows of a step,
and leaves the model's greedy answers unchanged through the executor."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from streamhost.engine import decode_attention as kernel_module
from streamhost.engine.decode_attention import decode_attention, load_kernel
from streamhost.engine.kv_cache import KVStore, Segment, StepPlan, attend
from streamhost.testing import greedy_decode_together


@pytest.fixture(scope="module", autouse=True)
def kernel() -> None:
    assert load_kernel(), "the kernel must build on this machine (make install builds it)"


def _reference(query, keys, values, row: int, length: int) -> torch.Tensor:
    """fp32 SDPA of one query [H, D] against the first ``length`` positions of ``row``."""
    return F.scaled_dot_product_attention(
        query[None, :, None].float(),
        keys[row : row + 1, :, :length].float(),
        values[row : row + 1, :, :length].float(),
        enable_gqa=True,
    )[0, :, 0]


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.bfloat16, 2e-2), (torch.float16, 2e-3), (torch.float32, 1e-5)])
def test_each_query_attends_its_own_row_up_to_its_own_length(dtype: torch.dtype, tolerance: float) -> None:
    torch.manual_seed(0)
    heads, kv_heads, dim = 9, 3, 64
    keys = torch.randn(12, kv_heads, 512, dim, dtype=dtype)
    values = torch.randn(12, kv_heads, 512, dim, dtype=dtype)
    query = torch.randn(10, heads, dim, dtype=dtype)
    tokens = torch.tensor([2, 3, 5, 6, 9])  # tokens 0, 1, 4, 7, 8 are someone's prompt: untouched
    rows = torch.tensor([7, 0, 11, 3, 5])
    lengths = torch.tensor([1, 47, 511, 200, 64])
    out = torch.full((10, heads, dim), 7.0, dtype=dtype)
    decode_attention(out, query, keys, values, tokens, rows, lengths, dim**-0.5)
    for token, row, length in zip(tokens.tolist(), rows.tolist(), lengths.tolist()):
        expected = _reference(query[token], keys, values, row, length)
        torch.testing.assert_close(out[token].float(), expected, atol=tolerance, rtol=tolerance)
    assert bool((out[[0, 1, 4, 7, 8]] == 7.0).all())


def test_a_rows_answer_does_not_depend_on_its_neighbours() -> None:
    torch.manual_seed(1)
    keys = torch.randn(8, 2, 256, 16, dtype=torch.bfloat16)
    values = torch.randn(8, 2, 256, 16, dtype=torch.bfloat16)
    query = torch.randn(8, 4, 16, dtype=torch.bfloat16)
    lengths = torch.tensor([5, 250, 17, 100, 64, 3, 200, 31])
    together = torch.empty_like(query)
    decode_attention(together, query, keys, values, torch.arange(8), torch.arange(8), lengths, 0.25)
    for i in range(8):
        alone = torch.empty_like(query)
        index = torch.tensor([i])
        decode_attention(alone, query, keys, values, index, index, lengths[i : i + 1], 0.25)
        assert torch.equal(alone[i], together[i])


def test_a_mixed_step_attends_as_sdpa_does() -> None:
    """Prompt chunks beside one-token decodes: the plan sends the decodes to the kernel and the
    chunks to SDPA; the step's output equals the all-SDPA plan's within bf16 rounding."""
    torch.manual_seed(2)
    store = KVStore(max_rows=8, max_positions=1024)
    store.reserve(6, 1024)
    keys, values = store.layer(0, torch.zeros(1, 2, 1, 32, dtype=torch.bfloat16))
    keys.normal_()
    values.normal_()
    segments = [
        Segment(0, [0], 46),
        Segment(1, [0] * 20, 0),  # a first prompt chunk
        Segment(2, [0], 699),
        Segment(3, [0], 50),
        Segment(4, [0] * 8, 100),  # a later chunk of a long prompt
        Segment(5, [0], 3),
    ]
    tokens = sum(len(s.ids) for s in segments)
    query = torch.randn(1, 4, tokens, 32, dtype=torch.bfloat16)
    with_kernel = StepPlan.build(store, segments, torch.bfloat16, torch.device("cpu"), kernel=True)
    sdpa_only = StepPlan.build(store, segments, torch.bfloat16, torch.device("cpu"))
    assert with_kernel.decodes is not None and with_kernel.decodes[0].tolist() == [0, 21, 22, 31]
    assert with_kernel.decodes[2].tolist() == [47, 700, 51, 4]
    torch.testing.assert_close(
        attend(with_kernel, 0, query, 32**-0.5).float(),
        attend(sdpa_only, 0, query, 32**-0.5).float(),
        atol=2e-2,
        rtol=0,
    )


def test_greedy_answers_are_the_same_with_and_without_the_kernel(tiny_llama_dir) -> None:
    from streamhost.engine.executor import TorchExecutor

    answers = []
    for use_kernel in (True, False):
        executor = TorchExecutor(tiny_llama_dir, dtype="fp32", decode_kernel=use_kernel)
        assert executor.decode_kernel is use_kernel
        prompts = [[5, 6, 7], list(range(10, 90)), [42] * 30]
        answers.append(greedy_decode_together(executor, prompts, 24))
    assert answers[0] == answers[1]


def test_the_environment_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kernel_module.ENV, "0")
    assert kernel_module.load_kernel.__wrapped__() is False
