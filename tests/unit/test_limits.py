"""Engine limits and execution options from TGI and LMI environment variables."""

from __future__ import annotations

import pytest

from streamhost.engine.limits import EngineLimits, ExecutionOptions


def test_defaults_follow_tgi_launcher_capped_at_4096():
    limits = EngineLimits.from_env({}, model_max_positions=8192)
    assert limits.max_total_tokens == 4096
    assert limits.max_input_tokens == 4095
    assert limits.max_batch_prefill_tokens == 4095 + 50
    assert limits.max_batch_total_tokens == 32768
    assert limits.max_batch_size == 32
    assert (limits.max_concurrent_requests, limits.max_best_of, limits.max_stop_sequences) == (128, 2, 4)
    assert (limits.max_top_n_tokens, limits.max_client_batch_size, limits.payload_limit) == (5, 4, 2_000_000)
    assert (limits.waiting_served_ratio, limits.max_waiting_tokens) == (0.0, 20)


def test_small_model_context_shapes_the_defaults():
    limits = EngineLimits.from_env({}, model_max_positions=512)
    assert (limits.max_total_tokens, limits.max_input_tokens, limits.max_batch_prefill_tokens) == (512, 511, 561)
    assert EngineLimits.from_env({}).max_total_tokens == 4096  # unknown context: TGI's 4096


def test_tgi_names_are_read():
    env = {
        "MAX_INPUT_TOKENS": "1000",
        "MAX_TOTAL_TOKENS": "1500",
        "MAX_BATCH_PREFILL_TOKENS": "2000",
        "MAX_BATCH_TOTAL_TOKENS": "60000",
        "MAX_BATCH_SIZE": "4",
        "MAX_CONCURRENT_REQUESTS": "10",
        "MAX_STOP_SEQUENCES": "0",
        "MAX_TOP_N_TOKENS": "10",
        "MAX_BEST_OF": "1",
        "MAX_CLIENT_BATCH_SIZE": "8",
        "WAITING_SERVED_RATIO": "1.2",
        "MAX_WAITING_TOKENS": "5",
        "PAYLOAD_LIMIT": "100",
    }
    limits = EngineLimits.from_env(env)
    assert limits == EngineLimits(1000, 1500, 2000, 60000, 4, 10, 0, 10, 1, 8, 1.2, 5, 100)


def test_legacy_max_input_length_and_both_set():
    assert EngineLimits.from_env({"MAX_INPUT_LENGTH": "100"}).max_input_tokens == 100
    with pytest.raises(ValueError, match=r"Both MAX_INPUT_TOKENS \(100\) and MAX_INPUT_LENGTH \(200\)"):
        EngineLimits.from_env({"MAX_INPUT_TOKENS": "100", "MAX_INPUT_LENGTH": "200"})


def test_lmi_names_are_read_and_tgi_names_win():
    limits = EngineLimits.from_env({"OPTION_MAX_ROLLING_BATCH_SIZE": "16", "OPTION_N_POSITIONS": "2048"})
    assert (limits.max_batch_size, limits.max_total_tokens, limits.max_input_tokens) == (16, 2048, 2047)
    pair = EngineLimits.from_env({"OPTION_MAX_INPUT_LEN": "1024", "OPTION_MAX_OUTPUT_LEN": "512"})
    assert (pair.max_input_tokens, pair.max_total_tokens) == (1024, 1536)
    assert EngineLimits.from_env({"OPTION_MAX_MODEL_LEN": "1000"}).max_total_tokens == 1000
    both = EngineLimits.from_env({"MAX_BATCH_SIZE": "2", "OPTION_MAX_ROLLING_BATCH_SIZE": "16"})
    assert both.max_batch_size == 2


def test_overrides_win_over_the_environment():
    limits = EngineLimits.from_env({"MAX_BATCH_SIZE": "2"}, overrides={"max_batch_size": 9, "max_best_of": None})
    assert limits.max_batch_size == 9 and limits.max_best_of == 2
    with pytest.raises(ValueError, match="unknown engine limit"):
        EngineLimits.from_env({}, overrides={"max_batch": 3})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"MAX_INPUT_TOKENS": "4096", "MAX_TOTAL_TOKENS": "2048"},
            r"MAX_INPUT_TOKENS \(4096\) must be < MAX_TOTAL_TOKENS \(2048\)",
        ),
        (
            {"MAX_INPUT_TOKENS": "2048", "MAX_TOTAL_TOKENS": "2048"},
            r"MAX_INPUT_TOKENS \(2048\) must be < MAX_TOTAL_TOKENS \(2048\)",
        ),
        ({"MAX_BATCH_PREFILL_TOKENS": "100"}, r"MAX_BATCH_PREFILL_TOKENS \(100\) must be >= MAX_INPUT_TOKENS \(4095\)"),
        ({"MAX_BATCH_TOTAL_TOKENS": "1000"}, r"MAX_TOTAL_TOKENS \(4096\) must be <= MAX_BATCH_TOTAL_TOKENS \(1000\)"),
        (
            {"MAX_BATCH_TOTAL_TOKENS": "4100"},
            r"MAX_BATCH_PREFILL_TOKENS \(4145\) must be <= MAX_BATCH_TOTAL_TOKENS \(4100\)",
        ),
        ({"MAX_BATCH_SIZE": "lots"}, r"MAX_BATCH_SIZE must be an integer, got 'lots'"),
        ({"MAX_CONCURRENT_REQUESTS": "0"}, r"MAX_CONCURRENT_REQUESTS must be > 0, got '0'"),
        ({"WAITING_SERVED_RATIO": "-1"}, r"WAITING_SERVED_RATIO must be >= 0, got '-1'"),
        ({"OPTION_MAX_ROLLING_BATCH_SIZE": "1.5"}, r"OPTION_MAX_ROLLING_BATCH_SIZE must be an integer"),
    ],
)
def test_cross_checks_name_the_settings(env, message):
    with pytest.raises(ValueError, match=message):
        EngineLimits.from_env(env)


def test_batch_total_default_never_below_a_full_request():
    limits = EngineLimits.from_env({"MAX_TOTAL_TOKENS": "40000", "MAX_INPUT_TOKENS": "1000"})
    assert limits.max_batch_total_tokens == 40000  # raised from 32768 to hold one full request
    prefill = EngineLimits.from_env({"MAX_TOTAL_TOKENS": "40000", "MAX_BATCH_PREFILL_TOKENS": "50000"})
    assert prefill.max_batch_total_tokens == 50000  # and to hold one full prefill


def test_blank_values_count_as_unset():
    assert EngineLimits.from_env({"MAX_BATCH_SIZE": " ", "MAX_TOTAL_TOKENS": ""}).max_batch_size == 32


def test_execution_options():
    assert ExecutionOptions.from_env({}) == ExecutionOptions(None, None)
    opts = ExecutionOptions.from_env({"OPTION_DTYPE": "fp16", "OPTION_TENSOR_PARALLEL_DEGREE": "2"})
    assert opts == ExecutionOptions("float16", 2)
    assert ExecutionOptions.from_env({"OPTION_DTYPE": "BF16"}).dtype == "bfloat16"
    assert ExecutionOptions.from_env({"OPTION_DTYPE": "fp32"}).dtype == "float32"
    assert ExecutionOptions.from_env({"DTYPE": "bfloat16"}).dtype == "bfloat16"
    assert ExecutionOptions.from_env({"OPTION_DTYPE": "auto"}).dtype is None
    assert ExecutionOptions.from_env({"SM_NUM_GPUS": "4"}).tensor_parallel_degree == 4
    assert ExecutionOptions.from_env({"SM_NUM_GPUS": "max"}, device_count=8).tensor_parallel_degree == 8
    assert (
        ExecutionOptions.from_env({"OPTION_TENSOR_PARALLEL_DEGREE": "max"}, device_count=0).tensor_parallel_degree == 1
    )
    with pytest.raises(ValueError, match="OPTION_DTYPE must be one of fp16, bf16, fp32 or auto, got 'int4'"):
        ExecutionOptions.from_env({"OPTION_DTYPE": "int4"})
    with pytest.raises(ValueError, match="SM_NUM_GPUS must be an integer or 'max', got 'two'"):
        ExecutionOptions.from_env({"SM_NUM_GPUS": "two"})
    with pytest.raises(ValueError, match="SM_NUM_GPUS must be >= 1"):
        ExecutionOptions.from_env({"SM_NUM_GPUS": "0"})
