"""Choose the next token for every request of a batch, each with its own parameters.

A continuous batch mixes requests that want different things: greedy, hot sampling, penalties.
:func:`sample_batch` applies each request's processors to its row of the logits, in the order
transformers and TGI use:

1. repetition_penalty on prompt + generated ids (transformers semantics: divide positive logits,
   multiply negative ones, once per distinct token);
2. frequency_penalty on generated ids (OpenAI semantics: ``logit -= penalty * count``);
3. no_repeat_ngram_size (ban tokens that would complete an n-gram already in prompt + output);
4. when sampling: temperature, top_k, top_p, typical_p (transformers' warper semantics), then a
   draw from the request's own ``torch.Generator``.

Greedy rows take the argmax of the penalised logits. The reported logprob is TGI's: the
``log_softmax`` of the fully processed row (penalties and, for sampling rows, every warper) at
the chosen id; ``top_tokens`` come from the same distribution (entries filtered to -inf are left
out, since JSON cannot carry them).

Why each request keeps its own generator: a seeded request must produce the same tokens whatever
else shares its batch. Every per-row operation here is row-independent and the random draw is a
single uniform from the request's generator followed by an inverse-CDF lookup, so batch
composition never changes a request's draws. Generators live on the CPU (cheap scalar draws,
and the same seed gives the same uniforms on any device).

Per-request history (distinct seen ids, generated-id counts, n-gram table) is kept incrementally
in small growable tensors and dicts, so a step costs O(tokens that matter), not O(history).
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from streamhost.engine.types import GenerationParameters

_NEG_INF = float("-inf")
_TOP_P_CANDIDATES = 256  # top_p looks at this many tokens first (see _top_p)


class _Growable:
    """A 1-D tensor that grows by doubling, so appending is O(1) and reading is a free view."""

    __slots__ = ("_buf", "_n")

    def __init__(self, dtype: torch.dtype, device: torch.device, values: Sequence[int | float] = ()) -> None:
        capacity = max(16, 2 * len(values))
        self._buf = torch.empty(capacity, dtype=dtype, device=device)
        self._n = len(values)
        if values:
            self._buf[: self._n] = torch.as_tensor(values, dtype=dtype)

    def append(self, value: int | float) -> int:
        if self._n == self._buf.numel():
            bigger = torch.empty(2 * self._n, dtype=self._buf.dtype, device=self._buf.device)
            bigger[: self._n] = self._buf
            self._buf = bigger
        self._buf[self._n] = value
        self._n += 1
        return self._n - 1

    def add_at(self, index: int, value: float) -> None:
        self._buf[index] += value

    def clone(self) -> _Growable:
        twin = _Growable.__new__(_Growable)
        twin._buf, twin._n = self._buf.clone(), self._n
        return twin

    def view(self) -> torch.Tensor:
        return self._buf[: self._n]

    def __len__(self) -> int:
        return self._n


class RequestSampler:
    """Per-request sampling state: parameters, seeded torch.Generator, token history for penalties.

    ``params`` should come from :func:`streamhost.engine.validation.validate_request`, whose
    ``do_sample`` is already the effective choice (TGI turns sampling on when a warper is set).
    """

    seed: int | None  # the seed actually used (drawn at random when sampling without one)
    is_greedy_plain: bool  # no sampling and no penalties: pure argmax

    def __init__(self, params: GenerationParameters, prompt_ids: Sequence[int], *, device: str = "cpu") -> None:
        self.params = params
        self.device = torch.device(device)
        self.do_sample = bool(params.do_sample)
        self.temperature = 1.0 if params.temperature is None else float(params.temperature)
        self.top_k = 0 if params.top_k is None else int(params.top_k)
        self.top_p = 1.0 if params.top_p is None else float(params.top_p)
        self.typical_p = 1.0 if params.typical_p is None else float(params.typical_p)
        self.repetition_penalty = 1.0 if params.repetition_penalty is None else float(params.repetition_penalty)
        self.frequency_penalty = 0.0 if params.frequency_penalty is None else float(params.frequency_penalty)
        self.no_repeat_ngram_size = int(params.no_repeat_ngram_size or 0)
        self.top_n_tokens = int(params.top_n_tokens or 0)

        if self.do_sample:
            self.seed = int(params.seed) if params.seed is not None else secrets.randbits(64)
            self.generator: torch.Generator | None = torch.Generator(device="cpu")
            self.generator.manual_seed(self.seed)
        else:
            self.seed = None
            self.generator = None

        self.is_greedy_plain = (
            not self.do_sample
            and self.repetition_penalty == 1.0
            and self.frequency_penalty == 0.0
            and self.no_repeat_ngram_size == 0
        )
        self.generated_ids: list[int] = []

        prompt = [int(t) for t in prompt_ids]
        # repetition_penalty: distinct ids of prompt + output.
        self._seen: set[int] | None = None
        self._seen_ids: _Growable | None = None
        if self.repetition_penalty != 1.0:
            self._seen = set(prompt)
            self._seen_ids = _Growable(torch.long, self.device, sorted(self._seen))
        # frequency_penalty: distinct generated ids and their counts.
        self._freq_pos: dict[int, int] | None = None
        if self.frequency_penalty != 0.0:
            self._freq_pos = {}
            self._freq_ids = _Growable(torch.long, self.device)
            self._freq_counts = _Growable(torch.float32, self.device)
        # no_repeat_ngram_size: (n-1)-gram prefix -> tokens that followed it.
        self._history: list[int] | None = None
        self._ngrams: dict[tuple[int, ...], set[int]] = {}
        if self.no_repeat_ngram_size > 0:
            self._history = prompt
            n = self.no_repeat_ngram_size
            for i in range(len(prompt) - n + 1):
                self._ngrams.setdefault(tuple(prompt[i : i + n - 1]), set()).add(prompt[i + n - 1])

    def append(self, token_id: int) -> None:
        """Record a generated token (the engine calls this after choosing it)."""
        token_id = int(token_id)
        self.generated_ids.append(token_id)
        if self._seen is not None and self._seen_ids is not None and token_id not in self._seen:
            self._seen.add(token_id)
            self._seen_ids.append(token_id)
        if self._freq_pos is not None:
            pos = self._freq_pos.get(token_id)
            if pos is None:
                self._freq_pos[token_id] = self._freq_ids.append(token_id)
                self._freq_counts.append(1.0)
            else:
                self._freq_counts.add_at(pos, 1.0)
        if self._history is not None:
            history = self._history
            history.append(token_id)
            n = self.no_repeat_ngram_size
            if len(history) >= n:
                self._ngrams.setdefault(tuple(history[len(history) - n : -1]), set()).add(token_id)

    def clone(self) -> RequestSampler:
        """An independent copy with the same history and generator state (for beam hypotheses)."""
        twin = copy.copy(self)
        twin.generated_ids = list(self.generated_ids)
        if self.generator is not None:
            twin.generator = torch.Generator(device="cpu")
            twin.generator.set_state(self.generator.get_state())
        if self._seen is not None and self._seen_ids is not None:
            twin._seen = set(self._seen)
            twin._seen_ids = self._seen_ids.clone()
        if self._freq_pos is not None:
            twin._freq_pos = dict(self._freq_pos)
            twin._freq_ids = self._freq_ids.clone()
            twin._freq_counts = self._freq_counts.clone()
        if self._history is not None:
            twin._history = list(self._history)
            twin._ngrams = {key: set(tokens) for key, tokens in self._ngrams.items()}
        return twin

    def banned_tokens(self) -> set[int]:
        """Tokens that would complete an n-gram already seen (empty when the rule is off)."""
        if self._history is None:
            return set()
        n = self.no_repeat_ngram_size
        if n == 1:
            return self._ngrams.get((), set())
        if len(self._history) < n - 1:
            return set()
        return self._ngrams.get(tuple(self._history[len(self._history) - n + 1 :]), set())


@dataclass
class SampleOutput:
    token_ids: list[int]
    logprobs: list[float]
    top_tokens: list[list[tuple[int, float]]] | None  # one list per row; None when no row asked


def sample_batch(
    logits: torch.Tensor,
    samplers: Sequence[RequestSampler],
    top_n_tokens: Sequence[int] | None = None,
) -> SampleOutput:
    """Pick one token per row of ``logits`` ([B, V], any float dtype; computed in float32).

    ``top_n_tokens`` overrides each sampler's own ``top_n_tokens`` when given. The samplers'
    histories are not updated here: the engine calls ``sampler.append(token)`` once it keeps
    the token (it may drop it, e.g. for a cancelled request).
    """
    if logits.dim() != 2 or logits.shape[0] != len(samplers):
        raise ValueError(f"logits must be [B, V] with B = {len(samplers)} samplers, got {tuple(logits.shape)}")
    batch, vocab = logits.shape
    tops = [s.top_n_tokens for s in samplers] if top_n_tokens is None else [int(n) for n in top_n_tokens]
    max_top = max(tops, default=0)

    if max_top == 0 and all(s.is_greedy_plain for s in samplers):
        if logits.device.type == "cpu" and logits.dtype == torch.float32:
            return _greedy_numpy(logits.numpy())
        scores = logits.float()
        ids = scores.argmax(dim=-1)
        chosen = torch.log_softmax(scores, dim=-1).gather(1, ids.unsqueeze(1)).squeeze(1)
        return SampleOutput(ids.tolist(), chosen.tolist(), None)

    scores = process_logits(logits, samplers)
    sample_rows = [i for i, s in enumerate(samplers) if s.do_sample]
    if len(sample_rows) == batch:
        ids = _draw(scores, samplers, sample_rows)
    else:
        ids = scores.argmax(dim=-1)
        if sample_rows:
            index = _index(sample_rows, scores.device)
            ids[index] = _draw(scores.index_select(0, index), samplers, sample_rows)
    # The fused log_softmax stays fast on rows full of -inf, unlike exp/logsumexp (~5x slower).
    logprobs = torch.log_softmax(scores, dim=-1)
    chosen = logprobs.gather(1, ids.unsqueeze(1)).squeeze(1)
    if max_top == 0:
        return SampleOutput(ids.tolist(), chosen.tolist(), None)

    top_vals, top_ids = logprobs.topk(min(max_top, vocab), dim=-1)
    top_val_rows, top_id_rows = top_vals.tolist(), top_ids.tolist()
    top_tokens = [
        [(t, v) for t, v in zip(top_id_rows[row][:n], top_val_rows[row][:n]) if v != _NEG_INF]
        for row, n in enumerate(tops)
    ]
    return SampleOutput(ids.tolist(), chosen.tolist(), top_tokens)


def _greedy_numpy(scores: np.ndarray) -> SampleOutput:
    """Argmax and its log-softmax on one thread. torch's ops here are parallel regions: on a
    loaded 2-core machine each waited for the other core's turn (~0.2 ms quiet, up to a time slice
    busy), for a row of 49k logits that one core reduces in ~30 us. Same ids as torch's argmax
    (the first of equal maxima); the logprob is ``-log(sum(exp(x - max)))``, torch's log_softmax
    at the argmax."""
    ids = scores.argmax(axis=1)
    top = scores[np.arange(scores.shape[0]), ids]
    total = np.exp(scores - top[:, None]).sum(axis=1, dtype=np.float32)
    return SampleOutput(ids.tolist(), (-np.log(total)).tolist(), None)


def process_logits(logits: torch.Tensor, samplers: Sequence[RequestSampler]) -> torch.Tensor:
    """A float32 copy of ``logits`` with each row's processors applied: penalties and n-gram
    bans for every row, warpers for sampling rows. ``sample_batch`` draws from exactly this;
    beam search scores candidates with its ``log_softmax``."""
    if logits.dim() != 2 or logits.shape[0] != len(samplers):
        raise ValueError(f"logits must be [B, V] with B = {len(samplers)} samplers, got {tuple(logits.shape)}")
    scores = logits.to(dtype=torch.float32, copy=True)
    _repetition_penalty(scores, samplers)
    _frequency_penalty(scores, samplers)
    _no_repeat_ngram(scores, samplers)
    sample_rows = [i for i, s in enumerate(samplers) if s.do_sample]
    if sample_rows:
        _warp(scores, samplers, sample_rows)
    return scores


# --- processors ---------------------------------------------------------------------------------


def _index(rows: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long, device=device)


def _flatten(rows: list[int], columns: list[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices for a ragged set of per-row id lists."""
    lengths = torch.tensor([c.numel() for c in columns], dtype=torch.long, device=device)
    row_idx = torch.repeat_interleave(_index(rows, device), lengths)
    return row_idx, torch.cat([c.to(device) for c in columns])


def _repetition_penalty(scores: torch.Tensor, samplers: Sequence[RequestSampler]) -> None:
    seen = [s._seen_ids if s.repetition_penalty != 1.0 else None for s in samplers]
    rows = [i for i, ids in enumerate(seen) if ids is not None and len(ids)]
    if not rows:
        return
    device = scores.device
    cols = [ids.view() for ids in (seen[i] for i in rows) if ids is not None]
    row_idx, col_idx = _flatten(rows, cols, device)
    penalty = torch.repeat_interleave(
        torch.tensor([samplers[i].repetition_penalty for i in rows], dtype=torch.float32, device=device),
        torch.tensor([c.numel() for c in cols], device=device),
    )
    values = scores[row_idx, col_idx]
    scores[row_idx, col_idx] = torch.where(values < 0, values * penalty, values / penalty)


def _frequency_penalty(scores: torch.Tensor, samplers: Sequence[RequestSampler]) -> None:
    rows = [i for i, s in enumerate(samplers) if s.frequency_penalty != 0.0 and len(s._freq_ids)]
    if not rows:
        return
    device = scores.device
    cols = [samplers[i]._freq_ids.view() for i in rows]
    row_idx, col_idx = _flatten(rows, cols, device)
    counts = torch.cat([samplers[i]._freq_counts.view().to(device) for i in rows])
    penalty = torch.repeat_interleave(
        torch.tensor([samplers[i].frequency_penalty for i in rows], dtype=torch.float32, device=device),
        torch.tensor([c.numel() for c in cols], device=device),
    )
    scores[row_idx, col_idx] = scores[row_idx, col_idx] - penalty * counts


def _no_repeat_ngram(scores: torch.Tensor, samplers: Sequence[RequestSampler]) -> None:
    row_idx: list[int] = []
    col_idx: list[int] = []
    for i, s in enumerate(samplers):
        if s.no_repeat_ngram_size:
            banned = s.banned_tokens()
            row_idx.extend([i] * len(banned))
            col_idx.extend(banned)
    if row_idx:
        scores[_index(row_idx, scores.device), _index(col_idx, scores.device)] = _NEG_INF


def _warp(scores: torch.Tensor, samplers: Sequence[RequestSampler], sample_rows: list[int]) -> None:
    """Temperature, top_k, top_p, typical_p, each on the sampling rows that use it."""
    device = scores.device
    vocab = scores.shape[1]

    rows = [i for i in sample_rows if samplers[i].temperature != 1.0]
    if rows:
        temps = torch.tensor([[samplers[i].temperature] for i in rows], dtype=torch.float32, device=device)
        _update_rows(scores, rows, lambda x: x.div_(temps))

    rows = [i for i in sample_rows if 0 < samplers[i].top_k < vocab]
    if rows:
        ks = torch.tensor([[samplers[i].top_k - 1] for i in rows], device=device)
        kmax = max(samplers[i].top_k for i in rows)

        def top_k(x: torch.Tensor) -> torch.Tensor:
            kth = x.topk(kmax, dim=-1).values.gather(1, ks)
            return x.masked_fill_(x < kth, _NEG_INF)

        _update_rows(scores, rows, top_k)

    rows = [i for i in sample_rows if samplers[i].top_p < 1.0]
    if rows:
        mass = torch.tensor([[samplers[i].top_p] for i in rows], dtype=torch.float32, device=device)
        _update_rows(scores, rows, lambda x: _top_p(x, mass))

    rows = [i for i in sample_rows if samplers[i].typical_p < 1.0]
    if rows:
        mass = torch.tensor([[samplers[i].typical_p] for i in rows], dtype=torch.float32, device=device)

        def typical(x: torch.Tensor) -> torch.Tensor:
            normalized = torch.log_softmax(x, dim=-1)
            entropy = -(normalized * normalized.exp()).nansum(-1, keepdim=True)
            shifted = (-normalized - entropy).abs()
            sorted_scores, sorted_idx = torch.sort(shifted, descending=False)
            cumulative = x.gather(-1, sorted_idx).softmax(dim=-1).cumsum(dim=-1)
            last = (cumulative < mass).sum(dim=1).clamp_(max=vocab - 1)
            remove = sorted_scores > sorted_scores.gather(1, last.view(-1, 1))
            remove[:, 0] = False  # keep at least one token
            return x.masked_fill_(remove.scatter(1, sorted_idx, remove), _NEG_INF)

        _update_rows(scores, rows, typical)


def _top_p(x: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """Keep the most likely tokens until their mass reaches ``mass`` (transformers' rule: a token
    goes when the mass of the tokens above it is already >= top_p; the top token always stays).

    A full sort of the vocabulary costs ~3 ms a row on CPU, so look at the top 256 candidates
    first and widen only while some row's candidates hold less than its ``mass``.
    """
    vocab = x.shape[1]
    probs = x.softmax(dim=-1)
    k = min(_TOP_P_CANDIDATES, vocab)
    while True:
        top_probs, top_idx = probs.topk(k, dim=-1)
        cumulative = top_probs.cumsum(dim=-1)
        if k == vocab or bool((cumulative[:, -1] >= mass.squeeze(1)).all()):
            break
        k = min(4 * k, vocab)
    keep = (cumulative - top_probs) < mass
    keep[:, 0] = True
    remove = torch.ones_like(x, dtype=torch.bool).scatter_(1, top_idx, ~keep)
    return x.masked_fill_(remove, _NEG_INF)


def _update_rows(scores: torch.Tensor, rows: list[int], fn) -> None:
    """Apply ``fn`` to the given rows of ``scores`` (in place when it is every row)."""
    if len(rows) == scores.shape[0]:
        fn(scores)
        return
    index = _index(rows, scores.device)
    scores.index_copy_(0, index, fn(scores.index_select(0, index)))


def _draw(x: torch.Tensor, samplers: Sequence[RequestSampler], rows: list[int]) -> torch.Tensor:
    """One token per row of ``x`` (the sampling rows): a uniform from the request's own
    generator, then an inverse-CDF lookup."""
    probs = torch.softmax(x, dim=-1)
    cdf = probs.cumsum(dim=-1)
    uniforms = torch.cat([torch.rand(1, generator=samplers[i].generator) for i in rows]).to(x.device)
    target = (uniforms * cdf[:, -1]).unsqueeze(1)
    picked = torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_(max=x.shape[1] - 1)
    # Rounding can land on a zero-probability token at the very end; take the mode there.
    ok = probs.gather(1, picked.unsqueeze(1)).squeeze(1) > 0
    if not bool(ok.all()):
        picked = torch.where(ok, picked, probs.argmax(dim=-1))
    return picked
