"""The llama.cpp executor's step: threads per step size, the batch fills, logits handed out
as views, and the greedy sampler on one thread (same tokens as before, whatever the path)."""

from __future__ import annotations

import pytest
import torch

from streamhost.engine.core import logits_table
from streamhost.engine.executors.llamacpp_threads import SMALL_STEP_TOKENS, StepThreads
from streamhost.engine.kv_cache import Segment
from streamhost.engine.limits import EngineLimits
from streamhost.engine.sampling import RequestSampler, sample_batch
from streamhost.engine.types import GenerationParameters


def test_small_steps_take_the_decode_threads_and_big_steps_every_thread() -> None:
    default = StepThreads(2)
    assert [default.for_step(n) for n in (1, SMALL_STEP_TOKENS, SMALL_STEP_TOKENS + 1, 512)] == [2, 2, 2, 2]
    one = StepThreads(4, decode=1)
    assert [one.for_step(n) for n in (1, SMALL_STEP_TOKENS, SMALL_STEP_TOKENS + 1, 512)] == [1, 1, 4, 4]
    assert StepThreads(2, decode=8).decode == 2  # never more than the engine's threads


@pytest.fixture(scope="module")
def llama(tiny_llama_gguf, tiny_llama_dir):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make install`")
    from transformers import AutoTokenizer

    from streamhost.engine.executors.llamacpp import LlamaCppExecutor

    def make(decode_threads: int | None):
        executor = LlamaCppExecutor(
            tiny_llama_gguf, AutoTokenizer.from_pretrained(tiny_llama_dir), threads=2, decode_threads=decode_threads
        )
        limits = EngineLimits(
            max_input_tokens=200,
            max_total_tokens=256,
            max_batch_prefill_tokens=256,
            max_batch_total_tokens=1024,
            max_batch_size=4,
        )
        executor.configure(limits, 256)
        return executor

    return make


def greedy(executor, prompts: list[list[int]], steps: int) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Prefill every prompt in one step (one segment asking for no logits), then decode greedily."""
    rows = [executor.alloc_row() for _ in prompts]
    segments = [Segment(rows[0], prompts[0][:-1], 0, "none")] + [
        Segment(r, p, 0, "last") for r, p in zip(rows[1:], prompts[1:])
    ]
    out = executor.forward(segments)
    assert out[0] is None
    (last,) = executor.forward([Segment(rows[0], prompts[0][-1:], len(prompts[0]) - 1, "last")])
    picks = [[int(last.argmax())]] + [[int(o.argmax())] for o in out[1:]]
    first_logits = [last.clone()] + [o.clone() for o in out[1:]]
    for step in range(steps):
        decode = [Segment(r, [p[-1]], len(prompt) + step) for r, p, prompt in zip(rows, picks, prompts)]
        for pick, logits in zip(picks, executor.forward(decode)):
            pick.append(int(logits.argmax()))
    for row in rows:
        executor.free_row(row)
    return picks, first_logits


def test_decode_threads_and_batch_paths_give_the_same_tokens(llama) -> None:
    """One and two threads, the decode-only fill and the general one: the same greedy tokens and
    logits (ggml gives each output row to one thread whole)."""
    prompts = [[1, 15, 27, 99, 4, 8], [1, 300, 301], [1, 42, 43, 44, 45]]
    one, two = llama(1), llama(2)
    picks_one, logits_one = greedy(one, prompts, 12)
    picks_two, logits_two = greedy(two, prompts, 12)
    assert picks_one == picks_two
    for a, b in zip(logits_one, logits_two):
        assert torch.equal(a, b)
    # the same sequence in two rows: one decodes through the decode-only fill, the other beside a
    # prompt chunk that asks for no logits (the general fill must clear the flags the first set)
    a, b, c = (two.alloc_row() for _ in range(3))
    two.forward([Segment(b, [5, 6, 7], 0), Segment(a, [5, 6, 7], 0)])  # rows falling: the general fill
    (alone,) = [t.clone() for t in two.forward([Segment(a, [8], 3)])]
    mixed = two.forward([Segment(c, [1, 2, 3, 4], 0, "none"), Segment(b, [8], 3)])
    assert mixed[0] is None and torch.equal(mixed[1], alone)
    for row in (a, b, c):
        two.free_row(row)
    assert one.describe()["step_threads"]["small_steps"] == 1 and two.describe()["step_threads"]["large_steps"] == 2


def test_logits_table_is_a_view_of_consecutive_rows_else_a_copy() -> None:
    table = torch.randn(4, 10)
    view = logits_table([table[1], table[2], table[3]])
    assert view.data_ptr() == table[1].data_ptr() and torch.equal(view, table[1:])
    scattered = logits_table([table[2], table[0]])
    assert torch.equal(scattered, torch.stack([table[2], table[0]]))
    assert torch.equal(logits_table([table[0], torch.randn(10)])[0], table[0])


def test_greedy_rows_pick_torch_argmax_and_its_log_softmax() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 49152) * 4
    logits[3, 7] = logits[3, 9] = logits[3].max() + 1  # a tie: the first index wins, as in torch
    samplers = [RequestSampler(GenerationParameters(), [1, 2]) for _ in range(5)]
    out = sample_batch(logits, samplers)
    ids = logits.argmax(dim=-1)
    assert out.token_ids == ids.tolist() and out.token_ids[3] == 7
    expected = torch.log_softmax(logits.double(), dim=-1).gather(1, ids[:, None]).squeeze(1)
    assert out.logprobs == pytest.approx(expected.tolist(), abs=1e-5)


def test_free_rows_inside_a_step_get_fillers_that_leave_no_trace(llama) -> None:
    """Rows 0-3 allocated, row 1 freed (empty), row 2 live but not in the step: the decode step of
    rows 0 and 3 gets a filler for row 1 at position 0 and one for row 2 after its cells (one
    micro-batch), the same tokens as without them, and leaves row 1 empty and row 2's cells as
    they were."""
    executor = llama(2)
    memory, api = executor._memory, executor.llama
    rows = [executor.alloc_row() for _ in range(4)]
    assert rows == [0, 1, 2, 3]
    executor.forward([Segment(r, [1, 20 + r, 30], 0) for r in rows])
    executor.free_row(1)
    step = [Segment(0, [7], 3), Segment(3, [7], 3)]
    assert executor._filler_rows(step) == [(1, 0), (2, 3)]
    with_hole = [t.clone() for t in executor.forward(step)]
    assert api.llama_memory_seq_pos_max(memory, 1) == -1
    assert api.llama_memory_seq_pos_max(memory, 2) == 2
    for row in (0, 2, 3):
        executor.free_row(row)
    # the same two sequences again, in rows 0 and 1: no gap
    again = [executor.alloc_row() for _ in range(2)]
    assert again == [0, 1]
    executor.forward([Segment(0, [1, 20, 30], 0), Segment(1, [1, 23, 30], 0)])
    plain = executor.forward([Segment(0, [7], 3), Segment(1, [7], 3)])
    for a, b in zip(with_hole, plain):
        assert int(a.argmax()) == int(b.argmax())
        assert torch.allclose(a, b, atol=1e-3)
    for row in again:
        executor.free_row(row)
