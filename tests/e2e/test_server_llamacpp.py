"""The llama.cpp executor through real servers: how it is chosen, HF_MODEL_QUANTIZE's cache, refusals.

The generic API behaviour (streaming, stops, UTF-8, aborts, 422/429) runs on this executor too:
the session TGI server of test_server_tgi.py / test_server_openai.py is parametrized by executor.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make install`")

from streamhost.engine.executors.llamacpp_kv import default_cache_type

SMALL = {"MAX_TOTAL_TOKENS": "256", "MAX_INPUT_TOKENS": "200", "MAX_BATCH_TOTAL_TOKENS": "2048"}


def generate(url: str, prompt: str, n: int = 8) -> dict:
    answer = httpx.post(
        url + "/generate", json={"inputs": prompt, "parameters": {"max_new_tokens": n, "details": True}}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def capital_of_france(url: str) -> str:
    """The default model's greedy chat answer to a question it knows."""
    chat = httpx.post(
        url + "/v1/chat/completions",
        timeout=120,
        json={
            "model": "tgi",
            "max_tokens": 24,
            "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        },
    ).json()
    return chat["choices"][0]["message"]["content"]


def test_quantize_converts_once_and_the_next_start_reuses_it(containers, tiny_llama_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {**SMALL, "HF_MODEL_QUANTIZE": "q8_0", "STREAMHOST_CACHE": str(cache)}
    first = containers.start(["--model-id", str(tiny_llama_dir)], env)
    info = httpx.get(first.url + "/info").json()
    assert (info["executor"], info["model_dtype"]) == ("llamacpp", "Q8_0")
    answer = generate(first.url, "The quick brown fox")
    assert answer["details"]["generated_tokens"] == 8
    assert "quantizing to q8_0" in first.log()
    first.stop()
    made = sorted((cache / "gguf").glob("*.gguf"))
    assert len(made) == 1 and "q8_0" in made[0].name

    # LMI's name for the same setting, on a second start: the cached file, no new conversion.
    again = containers.start(
        ["--model-id", str(tiny_llama_dir)], {**SMALL, "OPTION_QUANTIZE": "Q8_0", "STREAMHOST_CACHE": str(cache)}
    )
    assert "using cached q8_0 GGUF" in again.log() and "quantizing" not in again.log()
    assert generate(again.url, "The quick brown fox") == answer  # same weights, same greedy answer
    assert sorted((cache / "gguf").glob("*.gguf")) == made


def test_quantize_requantizes_a_gguf_model(containers, tiny_llama_gguf: Path, tiny_llama_gguf_env: dict) -> None:
    """A GGUF model with HF_MODEL_QUANTIZE runs at the asked type (llama.cpp's fast kernels cover
    some types only), made once into the cache, with the GGUF's own tokenizer."""
    server = containers.start(
        ["--model-id", str(tiny_llama_gguf)], {**SMALL, **tiny_llama_gguf_env, "HF_MODEL_QUANTIZE": "q8_0"}
    )
    info = httpx.get(server.url + "/info").json()
    assert (info["executor"], info["model_dtype"]) == ("llamacpp", "Q8_0")
    assert generate(server.url, "The quick brown fox")["details"]["generated_tokens"] == 8
    cache = Path(tiny_llama_gguf_env["STREAMHOST_CACHE"]) / "gguf"
    assert [p.name for p in cache.glob(f"{tiny_llama_gguf.stem}-*-q8_0-llamacpp*.gguf")], "kept for the next start"


@pytest.mark.parametrize(
    "env, status, fragments",
    [
        ({"HF_MODEL_QUANTIZE": "bitsandbytes"}, 1, ["'bitsandbytes' is not supported", "q8_0", "q4_k_m"]),
        ({"STREAMHOST_EXECUTOR": "onnx"}, 2, ["STREAMHOST_EXECUTOR 'onnx' is not valid", "torch, llamacpp"]),
        # the tiny model's 16-wide heads cannot hold q8_0's 32-element blocks: said at startup
        (
            {"STREAMHOST_EXECUTOR": "llamacpp", "STREAMHOST_CACHE_TYPE_V": "q8_0"},
            1,
            ["does not divide n_embd_head_v", "V q8_0", "a quantized cache type needs a head size"],
        ),
    ],
)
def test_what_cannot_run_fails_at_startup_with_a_clear_line(
    containers, tiny_llama_dir: Path, tmp_path: Path, env: dict, status: int, fragments: list[str]
) -> None:
    server = containers.start(
        ["--model-id", str(tiny_llama_dir)], {**SMALL, **env, "STREAMHOST_CACHE": str(tmp_path)}, wait=False
    )
    assert server.proc.wait(120) == status  # 1: the model cannot load; 2: a usage error
    log = server.log()
    assert all(fragment in log for fragment in fragments), log[-2000:]
    assert "Traceback" not in log


def test_executor_setting_forces_llamacpp_for_a_safetensors_folder(
    containers, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """A folder runs on torch unless told; STREAMHOST_EXECUTOR=llamacpp converts it (BF16 GGUF, cached)."""
    server = containers.start(
        ["--model-id", str(tiny_llama_dir)],
        {**SMALL, "STREAMHOST_EXECUTOR": "llamacpp", "STREAMHOST_CACHE": str(tmp_path)},
    )
    info = httpx.get(server.url + "/info").json()
    assert info["executor"] == "llamacpp" and info["model_dtype"] == "BF16"
    assert 'streamhost_executor_info{executor="llamacpp"} 1.0' in httpx.get(server.url + "/metrics").text
    assert generate(server.url, "Hello")["details"]["generated_tokens"] == 8
    assert len(list((tmp_path / "gguf").glob("*-bf16-llamacpp*.gguf"))) == 1


def test_default_model_runs_on_llamacpp_and_chats(containers) -> None:
    """Without being told, the embedded SmolLM2 Q4_1 GGUF runs on llama.cpp with the machine's
    default KV cells (bf16 where the CPU has bf16 dot products), answering a chat sensibly."""
    server = containers.start([], SMALL)
    info = httpx.get(server.url + "/info").json()
    assert (info["executor"], info["model_dtype"]) == ("llamacpp", "Q4_1")
    described = info["llamacpp"]
    assert (described["cache_type_k"], described["cache_type_v"]) == (default_cache_type(),) * 2
    assert "paris" in capital_of_france(server.url).lower()
    assert "under load HF_MODEL_QUANTIZE=q8_0" in server.log()  # the way to llama.cpp's batched kernels


def test_default_model_requantized_to_q8_0_chats_the_same(containers) -> None:
    """The README's advice under load: the shipped Q4_1 requantized to Q8_0 (llama.cpp's tiled
    kernels) serves, says its type, and answers the chat as Q4_1 does."""
    server = containers.start([], {**SMALL, "HF_MODEL_QUANTIZE": "q8_0"})
    info = httpx.get(server.url + "/info").json()
    assert (info["executor"], info["model_dtype"]) == ("llamacpp", "Q8_0")
    assert "paris" in capital_of_france(server.url).lower()
    assert "HF_MODEL_QUANTIZE=q8_0" not in server.log()  # no hint once it is done


def test_the_default_model_runs_on_torch_when_asked(containers) -> None:
    """``--executor torch`` still serves the default model (converted once to bf16 safetensors),
    with our decode-attention kernel in its engine-core process."""
    server = containers.start(["--executor", "torch"], SMALL)
    info = httpx.get(server.url + "/info").json()
    assert info["executor"] == "torch" and "llamacpp" not in info
    assert (info["torch"]["decode_attention"], info["torch"]["lean_forward"]) == ("kernel", True)
    assert "paris" in capital_of_france(server.url).lower()


def test_quantized_v_cells_through_the_server_answer_the_same_chat(containers) -> None:
    """--cache-type-v q8_0 (half the V cells' memory, faster decode at long rows) reaches llama.cpp in
    the core process, /info says so, and the default model still answers the chat."""
    server = containers.start(["--cache-type-v", "q8_0"], SMALL)
    described = httpx.get(server.url + "/info").json()["llamacpp"]
    assert (described["cache_type_k"], described["cache_type_v"], described["flash_attn"]) == (
        default_cache_type(),
        "q8_0",
        "auto",
    )
    assert f"K {default_cache_type()}, V q8_0" in server.log()
    assert "paris" in capital_of_france(server.url).lower()


def test_llamacpp_batches_streams_inside_the_engine_core_process(
    containers, tiny_llama_gguf: Path, tiny_llama_gguf_env: dict[str, str]
) -> None:
    """The default placement: llama.cpp's context lives in the engine-core child process; four
    streams hold four sequences there at once; a client that goes away frees its sequence while
    the other three run to their full length."""
    from test_metrics_truth import open_request, read_until, scrape, value, wait_for
    from test_server_core_process import core_processes

    server = containers.start(["--model-id", str(tiny_llama_gguf)], tiny_llama_gguf_env)
    assert server.proc is not None
    assert len(core_processes(server.proc.pid)) == 1
    assert httpx.get(server.url + "/info").json()["executor"] == "llamacpp"
    n = 1500  # long enough to watch four of them live at once
    body = json.dumps({"inputs": "Hello", "parameters": {"max_new_tokens": n, "ignore_eos": True, "details": True}})
    socks = [open_request(server.url, "/generate_stream", body.encode()) for _ in range(4)]
    try:
        for sock in socks:
            read_until(sock, b"data: ")
        wait_for(lambda: value(scrape(server.url), "streamhost_kv_rows") == 4, "four sequences in the core")
        socks.pop().close()  # one client goes away mid-stream
        wait_for(lambda: value(scrape(server.url), "streamhost_engine_aborted_total") == 1, "the core dropped it")
        finals = [read_until(sock, b'"generated_tokens"') for sock in socks]
        for final in finals:
            assert f'"generated_tokens":{n}'.encode() in final.replace(b" ", b""), final[-300:]
    finally:
        for sock in socks:
            sock.close()
    wait_for(lambda: value(scrape(server.url), "streamhost_kv_rows") == 0, "every sequence freed")
    assert generate(server.url, "The quick brown fox")["details"]["generated_tokens"] == 8
