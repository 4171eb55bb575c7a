"""Engine limits and execution options, from TGI's and LMI's setting names like TGI's launcher.

The names arrive as a mapping built by the model server (``server/config.py``); this module never
reads the process environment itself.

One place decides how long a prompt may be, how many tokens a request may hold, how much work a
batch may take and how many requests may wait, so the scheduler, the validator and ``/info``
agree. The names are TGI's (``MAX_INPUT_TOKENS``, ``MAX_TOTAL_TOKENS``, ...) with DJL-LMI's
``OPTION_*`` equivalents; when both name the same limit, TGI's wins:

- ``max_input_tokens``: ``MAX_INPUT_TOKENS`` | legacy ``MAX_INPUT_LENGTH`` (never both) |
  ``OPTION_MAX_INPUT_LEN``
- ``max_total_tokens``: ``MAX_TOTAL_TOKENS`` | ``OPTION_N_POSITIONS`` | ``OPTION_MAX_MODEL_LEN`` |
  input limit + ``OPTION_MAX_OUTPUT_LEN``
- ``max_batch_prefill_tokens``: ``MAX_BATCH_PREFILL_TOKENS`` | ``OPTION_MAX_ROLLING_BATCH_PREFILL_TOKENS``
- ``max_batch_size``: ``MAX_BATCH_SIZE`` | ``OPTION_MAX_ROLLING_BATCH_SIZE``
- the rest under TGI's names only (``MAX_CONCURRENT_REQUESTS``, ``PAYLOAD_LIMIT``, ...).

Defaults follow TGI's launcher (``launcher/src/main.rs``), scaled for CPU serving:

- ``max_total_tokens``: ``min(model_max_positions, 4096)`` (4096 when the model's is unknown).
- ``max_input_tokens``: ``max_total_tokens - 1`` (TGI: ``max_position_embeddings - 1``).
- ``max_batch_prefill_tokens``: ``max_input_tokens + 50`` (TGI's default; one longest prompt must
  fit in a prefill step, the 50 is TGI's slack). TGI's ``max_batch_size * max_input_tokens`` rule
  is for padded hardware targets and is not used here.
- ``max_batch_total_tokens``: TGI infers it from free GPU memory; on CPU there is no such probe,
  so the default is ``32768`` tokens of KV cache (about 0.7 GiB for SmolLM2-135M in bf16), raised
  to ``max_total_tokens`` and ``max_batch_prefill_tokens`` when those are larger.
- ``max_batch_size``: 32, LMI's default ``max_rolling_batch_size`` (TGI leaves it unbounded).
- ``waiting_served_ratio``: 0 (TGI: 0.3). TGI holds new requests back because its prefill is a
  separate forward that stalls every running stream; here a prompt chunk rides along with the
  decode step, so admitting at once is cheap. Measured with bench/serve.py at 16 streams on a
  mixed-prompt load: 0.3 gave TTFT p50 2677 ms, 0 gave 1500 ms and 4% more tok/s. Setting
  ``WAITING_SERVED_RATIO`` restores TGI's behaviour.

The cross-checks are the launcher's; each failure is a ``ValueError`` that names the settings
and their values.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_MAX_POSITIONS = 4096  # TGI's cap on defaults: "to save VRAM by refusing large prompts"
DEFAULT_MAX_BATCH_TOTAL_TOKENS = 32768  # CPU: no free-memory probe, a budget that fits in RAM
DEFAULT_MAX_BATCH_SIZE = 32  # LMI's default option.max_rolling_batch_size
PREFILL_SLACK = 50  # TGI: max_batch_prefill_tokens defaults to max_input_tokens + 50

# Environment names per field, first match wins (TGI's before LMI's).
_ENV_NAMES: dict[str, tuple[str, ...]] = {
    "max_total_tokens": ("MAX_TOTAL_TOKENS", "OPTION_N_POSITIONS", "OPTION_MAX_MODEL_LEN"),
    "max_batch_prefill_tokens": (
        "MAX_BATCH_PREFILL_TOKENS",
        "OPTION_MAX_ROLLING_BATCH_PREFILL_TOKENS",
    ),
    "max_batch_total_tokens": ("MAX_BATCH_TOTAL_TOKENS",),
    "max_batch_size": ("MAX_BATCH_SIZE", "OPTION_MAX_ROLLING_BATCH_SIZE"),
    "max_concurrent_requests": ("MAX_CONCURRENT_REQUESTS",),
    "max_stop_sequences": ("MAX_STOP_SEQUENCES",),
    "max_top_n_tokens": ("MAX_TOP_N_TOKENS",),
    "max_best_of": ("MAX_BEST_OF",),
    "max_client_batch_size": ("MAX_CLIENT_BATCH_SIZE",),
    "waiting_served_ratio": ("WAITING_SERVED_RATIO",),
    "max_waiting_tokens": ("MAX_WAITING_TOKENS",),
    "payload_limit": ("PAYLOAD_LIMIT",),
}
# Every name the limits are read from (what the server passes down, and nothing else).
SETTING_NAMES: frozenset[str] = frozenset(
    {name for names in _ENV_NAMES.values() for name in names}
    | {"MAX_INPUT_TOKENS", "MAX_INPUT_LENGTH", "OPTION_MAX_INPUT_LEN", "OPTION_MAX_OUTPUT_LEN"}
)
# Settings that may be 0 (everything else must be strictly positive).
_MAY_BE_ZERO = {"max_stop_sequences", "max_top_n_tokens", "max_waiting_tokens", "waiting_served_ratio"}


@dataclass(frozen=True)
class EngineLimits:
    """Token and request budgets of one model server (see the module docstring for defaults)."""

    max_input_tokens: int
    max_total_tokens: int
    max_batch_prefill_tokens: int
    max_batch_total_tokens: int
    max_batch_size: int  # running batch size cap (LMI OPTION_MAX_ROLLING_BATCH_SIZE; TGI MAX_BATCH_SIZE)
    max_concurrent_requests: int = 128
    max_stop_sequences: int = 4
    max_top_n_tokens: int = 5
    max_best_of: int = 2
    max_client_batch_size: int = 4
    waiting_served_ratio: float = 0.0
    max_waiting_tokens: int = 20
    payload_limit: int = 2_000_000

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` when the limits contradict each other (the launcher's checks)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{_label(f.name)} must be a number, got {value!r}")
            if value < 0 or (value == 0 and f.name not in _MAY_BE_ZERO):
                bound = ">= 0" if f.name in _MAY_BE_ZERO else "> 0"
                raise ValueError(f"{_label(f.name)} must be {bound}, got {value}")
        if self.max_input_tokens >= self.max_total_tokens:
            raise ValueError(
                f"MAX_INPUT_TOKENS ({self.max_input_tokens}) must be < MAX_TOTAL_TOKENS "
                f"({self.max_total_tokens}): a request needs room for at least one new token"
            )
        if self.max_batch_prefill_tokens < self.max_input_tokens:
            raise ValueError(
                f"MAX_BATCH_PREFILL_TOKENS ({self.max_batch_prefill_tokens}) must be >= "
                f"MAX_INPUT_TOKENS ({self.max_input_tokens}): the longest prompt must fit in one prefill"
            )
        if self.max_batch_total_tokens < self.max_total_tokens:
            raise ValueError(
                f"MAX_TOTAL_TOKENS ({self.max_total_tokens}) must be <= MAX_BATCH_TOTAL_TOKENS "
                f"({self.max_batch_total_tokens}): one full request must fit in the batch"
            )
        if self.max_batch_prefill_tokens > self.max_batch_total_tokens:
            raise ValueError(
                f"MAX_BATCH_PREFILL_TOKENS ({self.max_batch_prefill_tokens}) must be <= "
                f"MAX_BATCH_TOTAL_TOKENS ({self.max_batch_total_tokens})"
            )

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str],
        *,
        model_max_positions: int | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> EngineLimits:
        """Read the limits from ``environ``, a mapping of TGI/LMI setting names to values.

        ``model_max_positions`` is the model's context length (``max_position_embeddings``); it
        only shapes the defaults, as in TGI. ``overrides`` holds field names (``max_batch_size``,
        ...) that win over the environment, e.g. from ``serving.properties`` or the command line;
        a ``None`` value there means "not set".
        """
        env = environ
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        field_names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - field_names)
        if unknown:
            raise ValueError(f"unknown engine limit(s): {', '.join(unknown)}")

        values: dict[str, Any] = {}
        for name, env_names in _ENV_NAMES.items():
            if name in overrides:
                values[name] = _coerce(name, overrides[name], name)
                continue
            for env_name in env_names:
                raw = env.get(env_name)
                if raw is not None and raw.strip() != "":
                    values[name] = _coerce(name, raw, env_name)
                    break

        # LMI's TensorRT-LLM style pair: option.max_input_len (+ option.max_output_len).
        max_input = _max_input_tokens(env, overrides)
        if max_input is None:
            max_input = _env_int(env, "OPTION_MAX_INPUT_LEN")
        max_output = _env_int(env, "OPTION_MAX_OUTPUT_LEN")
        if "max_total_tokens" not in values and max_input is not None and max_output is not None:
            values["max_total_tokens"] = max_input + max_output

        # Defaults, in TGI's order.
        max_default = DEFAULT_MAX_POSITIONS
        if model_max_positions is not None and model_max_positions > 0:
            max_default = min(model_max_positions, DEFAULT_MAX_POSITIONS)
        values.setdefault("max_total_tokens", max_default)
        values["max_input_tokens"] = values["max_total_tokens"] - 1 if max_input is None else max_input
        if "max_batch_prefill_tokens" not in values:
            values["max_batch_prefill_tokens"] = values["max_input_tokens"] + PREFILL_SLACK
        if "max_batch_total_tokens" not in values:
            values["max_batch_total_tokens"] = max(
                DEFAULT_MAX_BATCH_TOTAL_TOKENS,
                values["max_total_tokens"],
                values["max_batch_prefill_tokens"],
            )
        values.setdefault("max_batch_size", DEFAULT_MAX_BATCH_SIZE)

        if model_max_positions and values["max_total_tokens"] > model_max_positions:
            logger.warning(
                "MAX_TOTAL_TOKENS (%d) is larger than the model's context length (%d); "
                "longer sequences may produce garbage unless the model scales its positions",
                values["max_total_tokens"],
                model_max_positions,
            )
        return cls(**values)


def _max_input_tokens(env: Mapping[str, str], overrides: Mapping[str, Any]) -> int | None:
    """MAX_INPUT_TOKENS, its legacy name MAX_INPUT_LENGTH (never both, like TGI), or LMI's."""
    if "max_input_tokens" in overrides:
        return int(_coerce("max_input_tokens", overrides["max_input_tokens"], "max_input_tokens"))
    tokens = _env_int(env, "MAX_INPUT_TOKENS")
    length = _env_int(env, "MAX_INPUT_LENGTH")
    if tokens is not None and length is not None:
        raise ValueError(
            f"Both MAX_INPUT_TOKENS ({tokens}) and MAX_INPUT_LENGTH ({length}) are set; set only "
            "MAX_INPUT_TOKENS (MAX_INPUT_LENGTH is its deprecated name)"
        )
    if tokens is not None:
        return tokens
    if length is not None:
        return length
    return None


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    return int(_coerce("max_input_tokens", raw, name))


def _coerce(field_name: str, raw: Any, source: str) -> int | float:
    """Parse one setting; the error names the variable and the bad value."""
    want_float = field_name == "waiting_served_ratio"
    if isinstance(raw, bool):
        raise ValueError(f"{source} must be a number, got {raw!r}")
    try:
        if isinstance(raw, str):
            text = raw.strip()
            value: int | float = float(text) if want_float else int(text)
        elif want_float:
            value = float(raw)
        else:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            value = int(raw)
    except (TypeError, ValueError):
        kind = "a number" if want_float else "an integer"
        raise ValueError(f"{source} must be {kind}, got {raw!r}") from None
    if value < 0 or (value == 0 and field_name not in _MAY_BE_ZERO):
        bound = ">= 0" if field_name in _MAY_BE_ZERO else "> 0"
        raise ValueError(f"{source} must be {bound}, got {raw!r}")
    return value


def _label(field_name: str) -> str:
    return field_name.upper()


# ---------------------------------------------------------------------------------------------
# Execution options: dtype and tensor parallelism.

_DTYPES = {
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
}


@dataclass(frozen=True)
class ExecutionOptions:
    """How to run the model: ``dtype`` is a torch dtype name (``None``: the model's own or
    ``auto``); ``tensor_parallel_degree`` is a number of devices (``None``: not set)."""

    dtype: str | None = None
    tensor_parallel_degree: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, device_count: int | None = None) -> ExecutionOptions:
        """Read ``OPTION_DTYPE`` (or TGI's ``DTYPE``) and ``OPTION_TENSOR_PARALLEL_DEGREE``
        (or ``SM_NUM_GPUS`` / ``NUM_SHARD``). ``max`` means every visible device:
        ``device_count`` if given, else ``torch.cuda.device_count()`` (at least 1)."""
        env = environ
        dtype = None
        for name in ("OPTION_DTYPE", "DTYPE"):
            raw = env.get(name)
            if raw is not None and raw.strip() != "":
                dtype = parse_dtype(raw, source=name)
                break
        degree = None
        for name in ("OPTION_TENSOR_PARALLEL_DEGREE", "SM_NUM_GPUS", "NUM_SHARD"):
            raw = env.get(name)
            if raw is not None and raw.strip() != "":
                degree = parse_parallel_degree(raw, source=name, device_count=device_count)
                break
        return cls(dtype=dtype, tensor_parallel_degree=degree)


def parse_dtype(raw: str, *, source: str = "dtype") -> str | None:
    """``fp16|bf16|fp32`` (and torch spellings) -> torch dtype name; ``auto`` -> ``None``."""
    key = raw.strip().lower().removeprefix("torch.")
    if key == "auto":
        return None
    if key not in _DTYPES:
        raise ValueError(f"{source} must be one of fp16, bf16, fp32 or auto, got {raw!r}")
    return _DTYPES[key]


def parse_parallel_degree(
    raw: str | int, *, source: str = "tensor_parallel_degree", device_count: int | None = None
) -> int:
    """An integer >= 1, or ``max`` for every visible accelerator."""
    if isinstance(raw, str) and raw.strip().lower() == "max":
        if device_count is None:
            try:
                import torch

                device_count = torch.cuda.device_count()
            except Exception:
                device_count = 0
        return max(1, device_count)
    try:
        value = int(raw.strip() if isinstance(raw, str) else raw)
    except (TypeError, ValueError):
        raise ValueError(f"{source} must be an integer or 'max', got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{source} must be >= 1, got {raw!r}")
    return value
