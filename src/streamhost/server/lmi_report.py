"""What became of each ``serving.properties`` / ``OPTION_*`` key, for ``GET /info``.

Every key the posts' LMI configurations use is accepted (a DJL model folder must load as it is),
but only some mean something to this server. ``/info`` lists both, with their values, so a user
can see that ``option.paged_attention=true`` was read and had no effect rather than guess.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamhost.server.serving_properties import ServingProperties

# key -> what it sets here
HONOURED: dict[str, str] = {
    "option.model_id": "the weights to load",
    "option.rolling_batch": "continuous batching, always on (every value but 'disable' names it)",
    "option.max_rolling_batch_size": "MAX_BATCH_SIZE",
    "option.max_rolling_batch_prefill_tokens": "MAX_BATCH_PREFILL_TOKENS",
    "option.output_formatter": "the response format (json, jsonlines, sse)",
    "option.enable_streaming": 'the pre-0.26 {"outputs": [...]} stream when no output_formatter is set',
    "option.dtype": "the weights' dtype",
    "option.n_positions": "MAX_TOTAL_TOKENS",
    "option.max_model_len": "MAX_TOTAL_TOKENS",
    "option.max_input_len": "MAX_INPUT_TOKENS",
    "option.max_output_len": "MAX_TOTAL_TOKENS - MAX_INPUT_TOKENS",
    "option.trust_remote_code": "allow the model's own code",
    "option.model_loading_timeout": "seconds the model may take to load",
}


def _honoured(key: str, value: str) -> bool:
    if key == "option.rolling_batch":
        return value.strip().lower() != "disable"
    return key in HONOURED


def serving_properties_report(properties: ServingProperties, source: Path | None) -> dict[str, Any]:
    """``{"file", "honoured": {key: {"value", "sets", "from"}}, "recorded": {key: {"value", "from"}}}``."""
    honoured: dict[str, Any] = {}
    recorded: dict[str, Any] = {}
    for key in sorted(properties.values):
        value = properties.values[key]
        origin = properties.sources.get(key, "serving.properties")
        if _honoured(key, value):
            honoured[key] = {"value": value, "sets": HONOURED[key], "from": origin}
        else:
            recorded[key] = {"value": value, "from": origin, "effect": "none: accepted and recorded"}
    return {"file": str(source) if source is not None else None, "honoured": honoured, "recorded": recorded}
