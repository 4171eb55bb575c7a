"""LMI's configuration: ``serving.properties`` and its ``OPTION_*`` environment equivalents.

DJL Serving reads a Java ``.properties`` file beside the model (``engine``, ``option.model_id``,
``option.rolling_batch``, ``option.output_formatter``, ...); ``option.x_y`` may also come from the
environment as ``OPTION_X_Y``, and the file wins. This is configuration of the model server, not
wire format, so it lives in ``server/`` (the jsonlines/SSE output it selects is ``protocols/lmi.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field


class ServingPropertiesError(ValueError):
    """A ``serving.properties``/``OPTION_*`` value that cannot be used; the message names key, value and source."""


# LMI's simplified environment names (starting-guide.md), weaker than OPTION_* and the file.
_ENV_ALIASES = {
    "HF_MODEL_ID": "option.model_id",
    "HF_REVISION": "option.revision",
    "HF_MODEL_TRUST_REMOTE_CODE": "option.trust_remote_code",
    "TENSOR_PARALLEL_DEGREE": "option.tensor_parallel_degree",
    "MAX_BATCH_SIZE": "option.max_rolling_batch_size",
    "MAX_CONCURRENT_REQUESTS": "job_queue_size",
}
_CAMEL_KEYS = {"option.entrypoint": "option.entryPoint"}
_ENGINES = ("Python", "MPI", "DeepSpeed")
_ROLLING_BATCH = ("auto", "scheduler", "lmi-dist", "vllm", "disable", "trtllm", "deepspeed")
_FORMATTERS = ("json", "jsonlines", "sse")
_DTYPES = {
    "fp16": "fp16",
    "float16": "fp16",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp32": "fp32",
    "float32": "fp32",
    "auto": "auto",
}
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
KNOWN_KEYS = (
    "engine",
    "option.model_id",
    "option.entryPoint",
    "option.tensor_parallel_degree",
    "option.rolling_batch",
    "option.max_rolling_batch_size",
    "option.output_formatter",
    "option.enable_streaming",
    "option.dtype",
    "option.n_positions",
    "option.trust_remote_code",
    "option.model_loading_timeout",
    "option.paged_attention",
    "option.low_cpu_mem_usage",
)


def parse_properties_text(text: str) -> dict[str, str]:
    """Java ``.properties`` syntax: ``#``/``!`` comments, ``=``/``:``/space separators, ``\\`` continuations."""
    out: dict[str, str] = {}
    logical = ""
    for raw in text.splitlines():
        line = raw.lstrip()
        if not logical and (not line or line[0] in "#!"):
            continue
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2 == 1:
            logical += line[:-1]
            continue
        logical += line
        key, value = _split_property(logical)
        logical = ""
        if key:
            out[key] = value
    if logical:
        key, value = _split_property(logical)
        if key:
            out[key] = value
    return out


_SEP = re.compile(r"(?<!\\)[=:\s]")


def _split_property(line: str) -> tuple[str, str]:
    match = _SEP.search(line)
    if match is None:
        return _unescape(line.strip()), ""
    key = line[: match.start()]
    rest = line[match.start() :].lstrip()
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip()
    return _unescape(key.strip()), _unescape(rest.strip())


_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)")


def _unescape_one(match: re.Match[str]) -> str:
    code = match.group(1)
    if len(code) == 5:
        return chr(int(code[1:], 16))
    return _ESCAPES.get(code, code)


def _unescape(s: str) -> str:
    return _ESCAPE.sub(_unescape_one, s) if "\\" in s else s


@dataclass(frozen=True)
class ServingProperties:
    """Merged LMI configuration with typed accessors; unknown keys are kept in ``values``.

    Build it with :meth:`load`; every known key is checked there, so a bad value fails at load time
    with a message that says which key, which value, from where, and what is allowed.
    """

    values: dict[str, str]
    sources: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, text: str | None = None, environ: Mapping[str, str] | None = None) -> ServingProperties:
        """``serving.properties`` text wins over ``OPTION_*`` variables, which win over LMI's plain names."""
        values: dict[str, str] = {}
        sources: dict[str, str] = {}
        for name, value in (environ or {}).items():
            if name in _ENV_ALIASES:
                key = _ENV_ALIASES[name]
                if key not in values:
                    values[key], sources[key] = value, name
        for name, value in (environ or {}).items():
            if name.startswith("OPTION_") and len(name) > 7:
                key = _CAMEL_KEYS.get("option." + name[7:].lower(), "option." + name[7:].lower())
                values[key], sources[key] = value, name
        for key, value in parse_properties_text(text or "").items():
            key = _CAMEL_KEYS.get(key.lower(), key)
            values[key], sources[key] = value, "serving.properties"
        props = cls(values, sources)
        props.validate()
        return props

    def validate(self) -> None:
        for name in (
            "engine",
            "tensor_parallel_degree",
            "rolling_batch",
            "max_rolling_batch_size",
            "output_formatter",
            "enable_streaming",
            "dtype",
            "n_positions",
            "trust_remote_code",
            "model_loading_timeout",
            "paged_attention",
            "low_cpu_mem_usage",
        ):
            getattr(self, name)

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.values.get(key, default)

    @property
    def extras(self) -> dict[str, str]:
        """Keys this module does not interpret (preserved for whoever does)."""
        return {k: v for k, v in self.values.items() if k not in KNOWN_KEYS}

    def _bad(self, key: str, value: str, allowed: str) -> ServingPropertiesError:
        source = self.sources.get(key, "serving.properties")
        return ServingPropertiesError(f"{key}={value!r} (from {source}) is not valid: expected {allowed}")

    def _choice(self, key: str, choices: tuple[str, ...], default: str | None) -> str | None:
        raw = self.values.get(key)
        if raw is None or raw.strip() == "":
            return default
        for choice in choices:
            if raw.strip().lower() == choice.lower():
                return choice
        raise self._bad(key, raw, "one of " + ", ".join(choices))

    def _int(self, key: str, minimum: int = 1) -> int | None:
        raw = self.values.get(key)
        if raw is None or raw.strip() == "":
            return None
        try:
            value = int(raw.strip())
        except ValueError:
            raise self._bad(key, raw, f"an integer >= {minimum}") from None
        if value < minimum:
            raise self._bad(key, raw, f"an integer >= {minimum}")
        return value

    def _bool(self, key: str, default: bool | None) -> bool | None:
        raw = self.values.get(key)
        if raw is None or raw.strip() == "":
            return default
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise self._bad(key, raw, "true or false")

    @property
    def engine(self) -> str:
        return self._choice("engine", _ENGINES, "Python") or "Python"

    @property
    def model_id(self) -> str | None:
        """Hub id, ``s3://`` prefix or local path; ``None`` means the model directory itself."""
        return self.values.get("option.model_id") or None

    @property
    def entry_point(self) -> str | None:
        return self.values.get("option.entryPoint") or None

    @property
    def tensor_parallel_degree(self) -> int | str | None:
        """An int >= 1, ``"max"`` (all devices), or ``None`` when unset."""
        raw = self.values.get("option.tensor_parallel_degree")
        if raw is not None and raw.strip().lower() == "max":
            return "max"
        try:
            return self._int("option.tensor_parallel_degree")
        except ServingPropertiesError:
            raise self._bad("option.tensor_parallel_degree", raw or "", "an integer >= 1 or 'max'") from None

    @property
    def rolling_batch(self) -> str:
        return self._choice("option.rolling_batch", _ROLLING_BATCH, "auto") or "auto"

    @property
    def max_rolling_batch_size(self) -> int | None:
        return self._int("option.max_rolling_batch_size")

    @property
    def output_formatter(self) -> str | None:
        return self._choice("option.output_formatter", _FORMATTERS, None)

    @property
    def enable_streaming(self) -> bool:
        """``true`` (or DJL's ``huggingface`` mode) selects the legacy ``{"outputs": [...]}`` stream."""
        raw = self.values.get("option.enable_streaming")
        if raw is not None and raw.strip().lower() == "huggingface":
            return True
        try:
            return bool(self._bool("option.enable_streaming", False))
        except ServingPropertiesError:
            raise self._bad("option.enable_streaming", raw or "", "true, false or huggingface") from None

    @property
    def dtype(self) -> str | None:
        """``fp16`` | ``bf16`` | ``fp32`` | ``auto`` (torch spellings accepted), or ``None``."""
        raw = self.values.get("option.dtype")
        if raw is None or raw.strip() == "":
            return None
        try:
            return _DTYPES[raw.strip().lower()]
        except KeyError:
            raise self._bad("option.dtype", raw, "fp16, bf16, fp32 or auto") from None

    @property
    def n_positions(self) -> int | None:
        """Total tokens per sequence (prompt + generated), as LMI's Neuron option means it."""
        return self._int("option.n_positions")

    @property
    def trust_remote_code(self) -> bool:
        return bool(self._bool("option.trust_remote_code", False))

    @property
    def model_loading_timeout(self) -> int | None:
        """Seconds."""
        return self._int("option.model_loading_timeout")

    @property
    def paged_attention(self) -> bool | None:
        return self._bool("option.paged_attention", None)

    @property
    def low_cpu_mem_usage(self) -> bool | None:
        return self._bool("option.low_cpu_mem_usage", None)

    def response_format(self, stream: bool) -> str:
        """Which output format a request gets: ``json``, ``jsonlines``, ``jsonlines-legacy`` or ``sse``.

        ``option.output_formatter`` decides when set (``json`` with a streaming request still
        streams as jsonlines, as DJL only honours it for non-streaming); otherwise
        ``enable_streaming=true`` streams every answer in the legacy format; otherwise the
        request's ``stream`` picks jsonlines or json.
        """
        formatter = self.output_formatter
        if formatter == "sse":
            return "sse"
        if formatter == "jsonlines":
            return "jsonlines"
        if self.enable_streaming:
            return "jsonlines-legacy"
        return "jsonlines" if stream else "json"
