"""How ``streamhost container`` resolves its settings from flags, environment and serving.properties.

Pure functions (no process); they sit beside the server's end-to-end tests because they pin the
behaviour the TGI and LMI images document for their environment variables.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from streamhost.server.config import (
    DEFAULT_MODEL,
    SettingsError,
    add_arguments,
    load_settings,
)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_serve_the_embedded_model_on_8080_in_the_tgi_dialect() -> None:
    s = load_settings(parse(), {})
    assert (s.model_id, s.dialect, s.port, s.host, s.drain_timeout) == (DEFAULT_MODEL, "tgi", 8080, "127.0.0.1", 30.0)


def test_sagemaker_environment_names() -> None:
    env = {
        "HF_MODEL_ID": "org/model",
        "HF_MODEL_REVISION": "abc",
        "HF_MODEL_TRUST_REMOTE_CODE": "true",
        "HF_MODEL_QUANTIZE": "bitsandbytes",
        "SM_NUM_GPUS": "2",
        "PORT": "9000",
        "HF_TOKEN": "secret",
    }
    s = load_settings(parse(), env)
    assert (s.model_id, s.revision, s.trust_remote_code, s.quantize, s.num_shards, s.port) == (
        "org/model",
        "abc",
        True,
        "bitsandbytes",
        2,
        9000,
    )
    assert "secret" not in s.describe()


def test_flags_override_the_environment() -> None:
    env = {"HF_MODEL_ID": "org/model", "PORT": "9000"}
    s = load_settings(
        parse("--model-id", "other/model", "--port", "7000", "--dtype", "fp16", "--drain-timeout", "5"), env
    )
    assert (s.model_id, s.port, s.dtype, s.drain_timeout) == ("other/model", 7000, "float16", 5.0)


def test_serving_properties_selects_lmi_and_wins_over_option_variables(tmp_path) -> None:
    (tmp_path / "serving.properties").write_text(
        "engine=Python\noption.model_id=org/from-file\noption.dtype=bf16\noption.max_rolling_batch_size=8\n"
        "option.enable_streaming=true\n"
    )
    env = {"OPTION_MAX_ROLLING_BATCH_SIZE": "2", "OPTION_MODEL_ID": "org/from-env"}
    s = load_settings(parse("--model-dir", str(tmp_path)), env)
    assert (s.dialect, s.model_id, s.dtype) == ("lmi", "org/from-file", "bfloat16")
    assert s.properties is not None and s.properties.response_format(stream=False) == "jsonlines-legacy"
    limits = s.engine.limit_settings.resolve()
    assert limits.max_batch_size == 8, "the file wins over OPTION_* for the engine's limits"


def test_option_variables_alone_select_lmi_and_the_model_dir_is_the_default_model(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{}")
    s = load_settings(parse("--model-dir", str(tmp_path)), {"OPTION_OUTPUT_FORMATTER": "sse"})
    assert s.dialect == "lmi" and s.model_id == str(tmp_path)
    assert s.properties.response_format(stream=True) == "sse"
    assert load_settings(parse("--model-dir", str(tmp_path), "--dialect", "tgi"), {"OPTION_X": "1"}).dialect == "tgi"


@pytest.mark.parametrize(
    ("argv", "env", "fragment"),
    [
        ((), {"HF_MODEL_TRUST_REMOTE_CODE": "maybe"}, "HF_MODEL_TRUST_REMOTE_CODE"),
        (("--dtype", "int3"), {}, "--dtype"),
        ((), {"PORT": "eighty"}, "PORT"),
        (("--model-dir", "/no/such/dir"), {}, "/no/such/dir"),
        ((), {"OPTION_DTYPE": "fp8"}, "option.dtype"),
        ((), {"HF_MODEL_ID": "s3://bucket/model"}, "s3://"),
        ((), {"STREAMHOST_DRAIN_TIMEOUT": "-1"}, "STREAMHOST_DRAIN_TIMEOUT"),
        ((), {"STREAMHOST_PREFIX_CACHE": "sometimes"}, "STREAMHOST_PREFIX_CACHE"),
        ((), {"STREAMHOST_DECODE_THREADS": "0"}, "STREAMHOST_DECODE_THREADS"),
        (("--decode-threads", "0"), {}, "--decode-threads"),
        (("--cache-type-v", "fp8"), {}, "--cache-type-v 'fp8' is not a KV cache type"),
        ((), {"STREAMHOST_CACHE_TYPE_K": "int4"}, "STREAMHOST_CACHE_TYPE_K"),
        ((), {"STREAMHOST_LLAMACPP_FLASH_ATTN": "sometimes"}, "STREAMHOST_LLAMACPP_FLASH_ATTN"),
        (("--cache-type-v", "q8_0", "--flash-attn", "off"), {}, "needs flash attention"),
    ],
)
def test_bad_settings_fail_with_a_message_naming_them(argv, env, fragment) -> None:
    with pytest.raises(SettingsError, match=fragment.replace(".", r"\.")):
        load_settings(parse(*argv), env)


def test_decode_threads_flag_over_the_variable() -> None:
    """llama.cpp's threads for small steps: every engine core unless a count is given."""
    assert load_settings(parse(), {}).engine.decode_threads is None
    assert load_settings(parse(), {"STREAMHOST_DECODE_THREADS": "1"}).engine.decode_threads == 1
    flagged = load_settings(parse("--decode-threads", "2"), {"STREAMHOST_DECODE_THREADS": "1"})
    assert flagged.engine.decode_threads == 2


def test_llamacpp_kv_settings_flag_over_the_variable() -> None:
    assert (load_settings(parse(), {}).engine.cache_type_v, load_settings(parse(), {}).engine.flash_attn) == (
        None,
        None,
    )
    env = {"STREAMHOST_CACHE_TYPE_V": "Q8_0", "STREAMHOST_CACHE_TYPE_K": "bf16", "STREAMHOST_LLAMACPP_FLASH_ATTN": "1"}
    engine = load_settings(parse(), env).engine
    assert (engine.cache_type_k, engine.cache_type_v, engine.flash_attn) == ("bf16", "q8_0", "on")
    flagged = load_settings(parse("--cache-type-v", "f16", "--flash-attn", "off"), env).engine
    assert (flagged.cache_type_k, flagged.cache_type_v, flagged.flash_attn) == ("bf16", "f16", "off")


def test_a_bad_setting_exits_2_with_one_line_and_no_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streamhost.cli", "container", "--dtype", "int3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "int3" in result.stderr


def test_engine_config_is_resolved_once_flags_then_tgi_names_then_the_file_then_option_variables(tmp_path) -> None:
    (tmp_path / "serving.properties").write_text(
        "option.model_id=org/model\noption.max_rolling_batch_size=8\noption.dtype=fp16\noption.tensor_parallel_degree=2\n"
    )
    env = {
        "MAX_BATCH_SIZE": "3",
        "OPTION_MAX_ROLLING_BATCH_SIZE": "2",
        "OPTION_N_POSITIONS": "1024",
        "DTYPE": "bf16",
        "SM_NUM_GPUS": "4",
        "HF_TOKEN": "secret",
        "STREAMHOST_BATCH_INVARIANT": "1",
        "UNRELATED": "x",
    }
    engine = load_settings(parse("--model-dir", str(tmp_path)), env).engine
    limits = engine.limit_settings.resolve(model_max_positions=2048)
    assert limits.max_batch_size == 3, "TGI's name wins over the file"
    assert limits.max_total_tokens == 1024, "an OPTION_* variable counts where the file is silent"
    assert (engine.dtype, engine.tensor_parallel_degree) == ("float16", 2), "the file wins over DTYPE / SM_NUM_GPUS"
    assert engine.batch_invariant and engine.hub_token == "secret" and "secret" not in repr(engine)
    assert "UNRELATED" not in engine.limit_settings.names and "HF_TOKEN" not in engine.limit_settings.names
    assert load_settings(parse("--model-dir", str(tmp_path), "--dtype", "fp32"), env).engine.dtype == "float32"
    plain = load_settings(parse(), {"DTYPE": "bf16"}).engine
    assert (plain.dtype, plain.tensor_parallel_degree, plain.batch_invariant) == ("bfloat16", None, False)
    assert plain.limit_settings.resolve(model_max_positions=512).max_total_tokens == 512


def test_a_bad_limit_fails_at_settings_time_naming_it() -> None:
    with pytest.raises(SettingsError, match="MAX_BATCH_SIZE"):
        load_settings(parse(), {"MAX_BATCH_SIZE": "lots"})
    with pytest.raises(SettingsError, match=r"MAX_INPUT_TOKENS \(600\) must be < MAX_TOTAL_TOKENS \(500\)"):
        load_settings(parse(), {"MAX_INPUT_TOKENS": "600", "MAX_TOTAL_TOKENS": "500"})


def test_prefix_cache_is_on_unless_a_flag_or_the_environment_turns_it_off() -> None:
    assert load_settings(parse(), {}).engine.prefix_cache is True
    assert load_settings(parse(), {"STREAMHOST_PREFIX_CACHE": "0"}).engine.prefix_cache is False
    assert load_settings(parse("--no-prefix-cache"), {}).engine.prefix_cache is False
    assert load_settings(parse("--prefix-cache"), {"STREAMHOST_PREFIX_CACHE": "false"}).engine.prefix_cache is True
