"""Builders for the small real models the tests and examples run on (no hub needed)."""

from __future__ import annotations

from pathlib import Path


def build_tiny_llama(folder: Path, tokenizer, seed: int = 0, num_layers: int = 2, max_positions: int = 2048) -> Path:
    """Save a tiny randomly initialised Llama using ``tokenizer``; forward passes take milliseconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)  # type: ignore[arg-type]  # transformers' decorated .to()
    # Random weights give near-uniform logits; a larger scale makes greedy picks well separated,
    # so batched and single runs agree exactly rather than flipping on rounding ties.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0) if not config.tie_word_embeddings else model.model.embed_tokens.weight.mul_(8.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


def greedy_decode_together(executor, prompts: list[list[int]], steps: int) -> list[list[int]]:
    """Greedy tokens of ``prompts`` on a torch executor: one packed prefill step for all of them,
    then ``steps`` packed decode steps (what tests compare with one setting on and off)."""
    from streamhost.engine.kv_cache import Segment

    rows = [executor.alloc_row() for _ in prompts]
    logits = executor.forward([Segment(r, p, 0, "last") for r, p in zip(rows, prompts)])
    current = [int(x.argmax()) for x in logits]
    lengths = [len(p) for p in prompts]
    tokens = [[c] for c in current]
    for _ in range(steps):
        logits = executor.forward([Segment(r, [c], n) for r, c, n in zip(rows, current, lengths)])
        lengths = [n + 1 for n in lengths]
        current = [int(x.argmax()) for x in logits]
        for seq, c in zip(tokens, current):
            seq.append(c)
    for row in rows:
        executor.free_row(row)
    return tokens
