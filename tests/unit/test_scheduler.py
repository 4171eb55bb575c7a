"""Scheduler decisions without a model: the per-step prompt budget, FCFS order, admission limits."""

from __future__ import annotations

from streamhost.engine.limits import EngineLimits
from streamhost.engine.scheduler import Scheduler, StepWork
from streamhost.engine.sequence import Sequence


def make_seq(name: str, prompt_len: int, max_new_tokens: int = 8) -> Sequence:
    # The scheduler reads only lengths and status; the sampler stays unused here.
    return Sequence(request_id=name, prompt_ids=list(range(prompt_len)), max_new_tokens=max_new_tokens, sampler=None)


def limits(**overrides) -> EngineLimits:
    base = dict(
        max_input_tokens=4000,
        max_total_tokens=4096,
        max_batch_prefill_tokens=4096,
        max_batch_total_tokens=100_000,
        max_batch_size=32,
    )
    base.update(overrides)
    return EngineLimits(**base)


def apply(sched: Scheduler, work: StepWork) -> None:
    """What the engine does after the forward: record prefill progress, promote, 'sample' a token."""
    for seq in work.decode:
        seq.generated.append(0)
    for item in work.prefill:
        item.seq.prefilled = item.start + item.length
        if item.completes_prompt:
            sched.promote(item.seq)
            item.seq.generated.append(0)


def test_burst_is_prefilled_first_come_first_served_within_the_step_budget():
    sched = Scheduler(limits(), prefill_chunk=100)
    burst = [make_seq(f"r{i}", n) for i, n in enumerate([30, 50, 40, 20, 90])]
    for seq in burst:
        sched.add(seq)
    steps = []
    while sched.waiting or sched.prefilling:
        work = sched.schedule()
        steps.append([(item.seq.request_id, item.start, item.length) for item in work.prefill])
        assert sum(item.length for item in work.prefill) <= 100
        apply(sched, work)
    assert steps[0] == [("r0", 0, 30), ("r1", 0, 50), ("r2", 0, 20)]  # r2 takes what is left
    assert steps[1] == [("r2", 20, 20), ("r3", 0, 20), ("r4", 0, 60)]  # the part-way prompt goes first
    assert steps[2] == [("r4", 60, 30)]
    # First tokens come in arrival order: each request is promoted no later than the one after it.
    assert [s.request_id for s in sched.running] == ["r0", "r1", "r2", "r3", "r4"]


def test_running_streams_decode_every_step_while_a_long_prompt_prefills():
    sched = Scheduler(limits(), prefill_chunk=64)
    runner = make_seq("running", 10, max_new_tokens=100)
    sched.add(runner)
    apply(sched, sched.schedule())
    long_prompt = make_seq("long", 300)
    sched.add(long_prompt)
    chunks = []
    while long_prompt.remaining_prompt:
        work = sched.schedule()
        assert runner in work.decode
        chunks.append(sum(item.length for item in work.prefill))
        apply(sched, work)
    assert chunks == [64, 64, 64, 64, 44]


def test_max_batch_prefill_tokens_bounds_the_step_when_smaller():
    sched = Scheduler(limits(max_input_tokens=200, max_batch_prefill_tokens=200), prefill_chunk=1024)
    assert sched.prefill_chunk == 200
    for i in range(3):
        sched.add(make_seq(f"r{i}", 150))
    work = sched.schedule()
    assert [(item.seq.request_id, item.length) for item in work.prefill] == [("r0", 150), ("r1", 50)]


def test_admission_respects_batch_size_and_token_budget():
    sched = Scheduler(limits(max_batch_size=2), prefill_chunk=1000)
    for i in range(3):
        sched.add(make_seq(f"r{i}", 10))
    work = sched.schedule()
    assert [item.seq.request_id for item in work.prefill] == ["r0", "r1"]
    assert [s.request_id for s in sched.waiting] == ["r2"]

    sched = Scheduler(limits(max_batch_total_tokens=5000, max_batch_prefill_tokens=4096), prefill_chunk=1000)
    big = make_seq("big", 100, max_new_tokens=4000)  # reserves 4100 of the 5000-token budget
    small = make_seq("small", 100, max_new_tokens=1000)  # 1100 more would exceed it
    sched.add(big)
    sched.add(small)
    work = sched.schedule()
    assert [item.seq.request_id for item in work.prefill] == ["big"]
    assert list(sched.waiting) == [small]
