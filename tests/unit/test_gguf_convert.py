"""Our safetensors -> GGUF converter against the model it converts: llama.cpp on the converted file
computes the same logits as transformers on the original, position by position.

The model here is a small random Llama whose settings all differ from llama.cpp's and
transformers' defaults (rope theta, RMS epsilon, grouped-query heads, tied embeddings), so a
setting the converter drops, or q/k rows in the wrong rope order, shows up as a logit mismatch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make install`")


@pytest.fixture(scope="module")
def odd_llama(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(smollm2_tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=smollm2_tokenizer.bos_token_id,
        eos_token_id=smollm2_tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)  # type: ignore[arg-type]
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(8.0)  # sharper logits: greedy picks well separated from rounding
        for layer in model.model.layers:  # peaked attention, so positions (rope) change the logits
            layer.self_attn.q_proj.weight.mul_(12.0)
            layer.self_attn.k_proj.weight.mul_(12.0)
    folder = tmp_path_factory.mktemp("odd-llama")
    model.save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


def llama_cpp_logits(gguf: Path, ids: list[int]) -> np.ndarray:
    """Every position's logits from one llama_decode of ``ids``."""
    from streamhost.engine.executors.llamacpp import import_llama_cpp, use_extra_buffers

    llama = import_llama_cpp()
    model_params = llama.llama_model_default_params()
    model_params.use_extra_bufts = use_extra_buffers()  # as the executor loads it
    model = llama.llama_model_load_from_file(str(gguf).encode(), model_params)
    params = llama.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = 256
    params.n_threads = params.n_threads_batch = 2
    ctx = llama.llama_init_from_model(model, params)
    batch = llama.llama_batch_init(len(ids), 0, 1)
    try:
        for i, token in enumerate(ids):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, i, 1, 1
            batch.seq_id[i][0] = 0
        batch.n_tokens = len(ids)
        assert llama.llama_decode(ctx, batch) == 0
        n_vocab = llama.llama_vocab_n_tokens(llama.llama_model_get_vocab(model))
        return np.ctypeslib.as_array(llama.llama_get_logits(ctx), shape=(len(ids), n_vocab)).copy()
    finally:
        llama.llama_batch_free(batch)
        llama.llama_free(ctx)
        llama.llama_model_free(model)


def test_converted_model_computes_the_same_logits_as_transformers(odd_llama: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from streamhost.engine.gguf_convert import convert_to_gguf

    gguf = convert_to_gguf(odd_llama, tmp_path / "odd.gguf", progress=lambda _: None)
    tokenizer = AutoTokenizer.from_pretrained(odd_llama)
    chat = [{"role": "user", "content": "Explain in two sentences why the sky is blue, and what happens at sunset."}]
    ids = list(
        tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    )
    assert len(ids) > 30  # long enough that rope theta and the q/k row order matter

    model = AutoModelForCausalLM.from_pretrained(odd_llama, dtype=torch.float32)  # the bf16 weights, f32 maths
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    got = llama_cpp_logits(gguf, ids)

    assert got.shape == expected.shape
    scale = np.abs(expected).max()
    worst = np.abs(got - expected).max()
    assert worst < 0.02 * scale, f"logits differ by up to {worst:.3f} (logit scale {scale:.1f})"
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()


def test_a_wrong_rope_layout_would_be_caught(odd_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tolerance above is tight enough to see a converter defect: without the q/k reordering
    the same comparison fails."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from streamhost.engine import gguf_convert

    monkeypatch.setattr(gguf_convert, "_permute", lambda weights, heads: weights)
    gguf = gguf_convert.convert_to_gguf(odd_llama, tmp_path / "unpermuted.gguf", progress=lambda _: None)
    ids = AutoTokenizer.from_pretrained(odd_llama).encode("The quick brown fox jumps over the lazy dog " * 4)
    model = AutoModelForCausalLM.from_pretrained(odd_llama, dtype=torch.float32)
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    got = llama_cpp_logits(gguf, ids)
    assert np.abs(got - expected).max() >= 0.02 * np.abs(expected).max()
