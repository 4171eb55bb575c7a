"""Beam search for non-streaming requests (``num_beams > 1``), through transformers' ``generate``.

Beam search keeps several hypotheses and only knows the winner at the end, so it cannot stream;
validation rejects it for streaming requests. It runs on its own thread beside the batch, so
running streams keep advancing (they share the cores, not the step).
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from streamhost.engine.validation import ValidatedRequest


@torch.inference_mode()
def beam_search(executor, request: ValidatedRequest, eos_ids: frozenset[int]) -> list[int]:
    """Return the best beam's generated token ids (EOS included when it ended there)."""
    params = request.params
    config = GenerationConfig(
        num_beams=int(params.num_beams or 1),
        early_stopping=bool(params.early_stopping) if params.early_stopping is not None else False,
        max_new_tokens=request.max_new_tokens,
        do_sample=False,
        repetition_penalty=params.repetition_penalty or 1.0,
        no_repeat_ngram_size=params.no_repeat_ngram_size or 0,
        eos_token_id=None if params.ignore_eos else sorted(eos_ids),
        pad_token_id=executor.tokenizer.pad_token_id
        if executor.tokenizer.pad_token_id is not None
        else (sorted(eos_ids)[0] if eos_ids else 0),
    )
    ids = torch.tensor([request.input_ids], dtype=torch.long, device=executor.device)
    output = executor.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    generated = output[0, ids.shape[1] :].tolist()
    # generate pads finished beams; cut after the first EOS.
    for i, tok in enumerate(generated):
        if tok in eos_ids and not params.ignore_eos:
            return generated[: i + 1]
    return generated
