"""The batched sampler: each processor against transformers' own, seeds, logprobs, fast path."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import (
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from streamhost.engine.sampling import RequestSampler, process_logits, sample_batch
from streamhost.engine.types import GenerationParameters

V = 64


def sampler(prompt=(1, 2, 3), **kw) -> RequestSampler:
    return RequestSampler(GenerationParameters(**kw), list(prompt))


def rand_logits(batch: int, vocab: int = V, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 3


# --- greedy fast path and logprobs ---------------------------------------------------------------


def test_greedy_fast_path_is_argmax_with_log_softmax_logprobs():
    logits = rand_logits(5)
    samplers = [sampler() for _ in range(5)]
    assert all(s.is_greedy_plain for s in samplers)
    out = sample_batch(logits, samplers)
    assert out.token_ids == logits.argmax(-1).tolist()
    expected = torch.log_softmax(logits, -1).gather(1, logits.argmax(-1, keepdim=True)).squeeze(1)
    assert out.logprobs == pytest.approx(expected.tolist(), abs=1e-5)
    assert out.top_tokens is None


def test_half_precision_logits_are_computed_in_float32():
    logits = rand_logits(3).to(torch.bfloat16)
    out = sample_batch(logits, [sampler() for _ in range(3)])
    assert out.token_ids == logits.float().argmax(-1).tolist()
    assert all(lp <= 0 for lp in out.logprobs)


def test_top_tokens_form_a_distribution_over_the_whole_vocab():
    logits = rand_logits(3, vocab=8)
    samplers = [sampler(), sampler(do_sample=True, seed=1, temperature=0.5), sampler(repetition_penalty=1.3)]
    out = sample_batch(logits, samplers, top_n_tokens=[8, 8, 8])
    for row, top in enumerate(out.top_tokens):
        assert len(top) == 8
        assert all(lp <= 0 for _, lp in top)
        assert sum(math.exp(lp) for _, lp in top) == pytest.approx(1.0, abs=1e-5)
        assert [lp for _, lp in top] == sorted((lp for _, lp in top), reverse=True)
        assert out.logprobs[row] == pytest.approx(dict(top)[out.token_ids[row]], abs=1e-6)


def test_top_tokens_leave_out_filtered_tokens_and_respect_each_row_n():
    logits = rand_logits(2, vocab=8)
    samplers = [sampler(do_sample=True, seed=3, top_k=2), sampler(top_n_tokens=3)]
    samplers[0].top_n_tokens = 5
    out = sample_batch(logits, samplers)
    assert len(out.top_tokens[0]) == 2  # only two tokens survive top_k=2
    assert sum(math.exp(lp) for _, lp in out.top_tokens[0]) == pytest.approx(1.0, abs=1e-5)
    assert len(out.top_tokens[1]) == 3
    assert [t for t, _ in out.top_tokens[1]] == logits[1].topk(3).indices.tolist()


def test_logprob_is_taken_after_temperature_like_tgi():
    logits = rand_logits(1)
    s = sampler(do_sample=True, seed=7, temperature=0.5)
    out = sample_batch(logits, [s])
    expected = torch.log_softmax(logits[0] / 0.5, -1)[out.token_ids[0]].item()
    assert out.logprobs[0] == pytest.approx(expected, abs=1e-5)


# --- each processor against transformers --------------------------------------------------------


def test_repetition_penalty_matches_transformers_on_prompt_and_generated_ids():
    logits = rand_logits(1)
    s = sampler(prompt=[4, 9, 9, 17], repetition_penalty=1.5)
    s.append(30)
    s.append(4)
    ours = process_logits(logits, [s])
    ids = torch.tensor([[4, 9, 9, 17, 30, 4]])
    theirs = RepetitionPenaltyLogitsProcessor(1.5)(ids, logits.clone())
    torch.testing.assert_close(ours, theirs)
    assert not torch.equal(ours, logits)


def test_frequency_penalty_subtracts_penalty_times_generated_count():
    logits = torch.zeros(1, 10)
    s = sampler(prompt=[1, 2], frequency_penalty=0.5)
    for t in (3, 3, 5, 3):
        s.append(t)
    out = process_logits(logits, [s])[0]
    assert out[3].item() == pytest.approx(-1.5)
    assert out[5].item() == pytest.approx(-0.5)
    assert out[1].item() == 0.0 and out[2].item() == 0.0  # prompt tokens are not counted
    negative = process_logits(logits, [sampler(frequency_penalty=-1.0)])
    assert torch.equal(negative, logits)  # nothing generated yet, nothing to change


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram_matches_transformers(n):
    gen = torch.Generator().manual_seed(n)
    prompt = torch.randint(0, 6, (12,), generator=gen).tolist()
    s = sampler(prompt=prompt, no_repeat_ngram_size=n)
    history = list(prompt)
    for step in range(6):
        logits = rand_logits(1, vocab=6, seed=step)
        ours = process_logits(logits, [s])
        theirs = NoRepeatNGramLogitsProcessor(n)(torch.tensor([history]), logits.clone())
        assert torch.equal(torch.isinf(ours), torch.isinf(theirs)), (n, step)
        token = int(torch.randint(0, 6, (1,), generator=gen))
        s.append(token)
        history.append(token)


def test_no_repeat_ngram_bans_the_completing_token():
    s = sampler(prompt=[5, 6, 7, 5], no_repeat_ngram_size=2)
    logits = torch.zeros(1, 10)
    logits[0, 6] = 10.0  # the model wants to repeat "5 6"
    out = sample_batch(logits, [s])
    assert out.token_ids[0] != 6


def test_mixed_batch_warpers_match_transformers_row_by_row():
    logits = rand_logits(5, vocab=200, seed=11)
    configs = [
        {},  # greedy: untouched
        {"do_sample": True, "top_k": 5},
        {"do_sample": True, "temperature": 0.7, "top_p": 0.8},
        {"do_sample": True, "typical_p": 0.5},
        {"do_sample": True, "temperature": 1.3, "top_k": 40, "top_p": 0.9, "typical_p": 0.95},
    ]
    samplers = [sampler(seed=1, **c) if c else sampler(**c) for c in configs]
    ours = process_logits(logits, samplers)
    for row, cfg in enumerate(configs):
        expected = logits[row : row + 1].clone()
        ids = torch.tensor([[1, 2, 3]])
        if cfg.get("temperature"):
            expected = TemperatureLogitsWarper(cfg["temperature"])(ids, expected)
        if cfg.get("top_k"):
            expected = TopKLogitsWarper(cfg["top_k"])(ids, expected)
        if cfg.get("top_p"):
            expected = TopPLogitsWarper(cfg["top_p"])(ids, expected)
        if cfg.get("typical_p"):
            expected = TypicalLogitsWarper(cfg["typical_p"])(ids, expected)
        torch.testing.assert_close(ours[row : row + 1], expected, msg=f"row {row}: {cfg}")
    kept = torch.isfinite(ours).sum(-1).tolist()
    assert kept[0] == 200 and kept[1] == 5 and kept[2] < 200 and kept[3] < 200


def test_sampled_tokens_survive_the_filters():
    logits = rand_logits(64, vocab=100, seed=5)
    samplers = [sampler(do_sample=True, seed=i, top_k=3) for i in range(64)]
    out = sample_batch(logits, samplers)
    top3 = logits.topk(3, dim=-1).indices.tolist()
    assert all(t in allowed for t, allowed in zip(out.token_ids, top3))


def test_draws_follow_the_distribution():
    probs = torch.tensor([0.7, 0.2, 0.1, 0.0])
    logits = probs.log().expand(3000, 4).contiguous()
    samplers = [sampler(do_sample=True, seed=i) for i in range(3000)]
    out = sample_batch(logits, samplers)
    counts = torch.bincount(torch.tensor(out.token_ids), minlength=4) / 3000
    assert counts[3].item() == 0.0
    assert counts[:3].tolist() == pytest.approx([0.7, 0.2, 0.1], abs=0.03)


# --- seeds ----------------------------------------------------------------------------------------


def _toy_model(histories: list[list[int]], vocab: int) -> torch.Tensor:
    """Deterministic logits per row from the row's own history (a fixed random bigram table)."""
    table = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(1234)) * 2
    return torch.stack([table[h[-1]] + 0.01 * len(h) for h in histories])


def _run(samplers: list[RequestSampler], prompts: list[list[int]], steps: int, vocab: int) -> list[list[int]]:
    histories = [list(p) for p in prompts]
    for _ in range(steps):
        out = sample_batch(_toy_model(histories, vocab), samplers)
        for s, h, t in zip(samplers, histories, out.token_ids):
            s.append(t)
            h.append(t)
    return [h[len(p) :] for h, p in zip(histories, prompts)]


def test_seeded_request_is_independent_of_batch_composition():
    vocab = 500
    target = {"do_sample": True, "seed": 42, "temperature": 0.9, "top_p": 0.95, "repetition_penalty": 1.1}
    alone = _run([sampler(prompt=[7, 8], **target)], [[7, 8]], 50, vocab)[0]

    others = [
        {},
        {"do_sample": True, "seed": 1},
        {"do_sample": True, "temperature": 0.3, "top_k": 4},
        {"repetition_penalty": 1.4, "frequency_penalty": 0.8},
        {"do_sample": True, "typical_p": 0.6, "seed": 99},
        {"no_repeat_ngram_size": 2},
        {"do_sample": True, "temperature": 1.5},  # random seed
    ]
    prompts = [[i, i + 1, i + 2] for i in range(7)]
    samplers = [sampler(prompt=p, **c) for p, c in zip(prompts, others)]
    # Put the target in the middle of the batch.
    samplers.insert(3, sampler(prompt=[7, 8], **target))
    prompts.insert(3, [7, 8])
    together = _run(samplers, prompts, 50, vocab)[3]
    assert together == alone
    assert len(set(alone)) > 5  # it really sampled


def test_same_seed_same_tokens_different_seed_different_tokens():
    vocab = 300
    a = _run([sampler(do_sample=True, seed=5)], [[1]], 30, vocab)[0]
    b = _run([sampler(do_sample=True, seed=5)], [[1]], 30, vocab)[0]
    c = _run([sampler(do_sample=True, seed=6)], [[1]], 30, vocab)[0]
    assert a == b
    assert a != c


def test_seed_is_drawn_when_sampling_and_absent_when_greedy():
    s = sampler(do_sample=True)
    assert isinstance(s.seed, int) and 0 <= s.seed < 2**64
    assert sampler(do_sample=True, seed=2**64 - 1).seed == 2**64 - 1
    greedy = sampler(repetition_penalty=1.2)
    assert greedy.seed is None and not greedy.is_greedy_plain


def test_penalties_follow_generated_tokens_across_steps():
    # Greedy with a strong repetition penalty must not pick the same token twice in a row
    # when the logits are flat apart from a small preference.
    s = sampler(prompt=[0], repetition_penalty=100.0)
    chosen = []
    for _ in range(5):
        logits = torch.linspace(1.0, 2.0, 10).unsqueeze(0)
        t = sample_batch(logits, [s]).token_ids[0]
        s.append(t)
        chosen.append(t)
    assert len(set(chosen)) == 5
    assert chosen[0] == 9


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="logits must be"):
        sample_batch(torch.zeros(2, 5), [sampler()])


def test_top_p_on_a_flat_distribution_widens_past_the_first_candidates():
    # ~2000 near-equal tokens: top_p=0.9 keeps far more than the 256 first looked at.
    logits = torch.randn(2, 2000, generator=torch.Generator().manual_seed(2)) * 0.1
    samplers = [sampler(do_sample=True, seed=1, top_p=0.9), sampler(do_sample=True, seed=2, top_p=0.3)]
    ours = process_logits(logits, samplers)
    for row, p in enumerate((0.9, 0.3)):
        theirs = TopPLogitsWarper(p)(None, logits[row : row + 1].clone())
        assert torch.equal(torch.isinf(ours[row : row + 1]), torch.isinf(theirs))
    assert torch.isfinite(ours[0]).sum() > 1500


def test_clone_continues_identically_and_independently():
    vocab = 200
    original = sampler(
        prompt=[3, 4], do_sample=True, seed=9, repetition_penalty=1.2, frequency_penalty=0.4, no_repeat_ngram_size=2
    )
    _run([original], [[3, 4]], 5, vocab)
    twin = original.clone()
    history = [3, 4] + original.generated_ids
    a = _run([original], [history], 20, vocab)[0]
    b = _run([twin], [history], 20, vocab)[0]
    assert a == b
    assert original.generated_ids[:5] == twin.generated_ids[:5]
    twin.append(0)
    assert len(twin.generated_ids) == len(original.generated_ids) + 1
