"""Fine-tuning hyperparameters: names, types, allowed ranges and catalog-defined defaults.

SageMaker sends HyperParameters as a string-to-string map; JumpStart publishes per-model defaults
and ranges and the SDK's ``hyperparameters.retrieve_default`` / ``validate`` check them before a
job starts. Here one table (``SPECS``) is the single source of truth for all three: the defaults a
client retrieves, the check CreateTrainingJob runs (a ValidationException naming the key and its
allowed range, no job created), and the typed values the trainer process reads.

A catalog entry may override defaults with ``training_defaults`` (e.g. a larger model wants a
smaller learning rate); unknown keys there are a catalog error, not a silent no-op.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["SPECS", "HyperparameterError", "defaults_for", "parse", "to_strings"]

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt",
)  # fmt: skip


class HyperparameterError(ValueError):
    """A hyperparameter is unknown, mistyped or out of range; ``key`` names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Spec:
    """One hyperparameter: its type (int, float, bool, str), default and allowed values."""

    name: str
    type: type
    default: Any
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    min_exclusive: bool = False
    help: str = ""

    def allowed(self) -> str:
        """The allowed values in words (what an error message quotes)."""
        if self.type is bool:
            return "true or false"
        if self.choices:
            return "one of " + ", ".join(self.choices)
        kind = "an integer" if self.type is int else "a number"
        low = (
            "" if self.min is None else (f"> {_number(self.min)}" if self.min_exclusive else f">= {_number(self.min)}")
        )
        high = "" if self.max is None else f"<= {_number(self.max)}"
        bounds = " and ".join(b for b in (low, high) if b)
        return f"{kind} {bounds}".strip()

    def convert(self, raw: Any) -> Any:
        """The typed value of ``raw`` (a string from the wire, or a Python value); raises HyperparameterError."""
        text = str(raw).strip()
        bad = HyperparameterError(self.name, f"hyperparameter {self.name}={raw!r} is invalid: must be {self.allowed()}")
        if self.type is bool:
            if isinstance(raw, bool):
                return raw
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise bad
        if self.type is str:
            if self.choices and text not in self.choices:
                raise bad
            return text
        try:
            value: float | int = float(text) if self.type is float else int(float(text))
            if self.type is int and float(text) != int(float(text)):
                raise ValueError
        except (ValueError, OverflowError):
            raise bad from None
        if isinstance(value, float) and not math.isfinite(value):
            raise bad
        if self.min is not None and (value <= self.min if self.min_exclusive else value < self.min):
            raise bad
        if self.max is not None and value > self.max:
            raise bad
        return value


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


SPECS: dict[str, Spec] = {
    s.name: s
    for s in (
        Spec("epoch", int, 1, 1, 1000, help="passes over the training data"),
        Spec("max_steps", int, -1, -1, 10_000_000, help="optimizer steps; -1: as many as the epochs take"),
        Spec("learning_rate", float, 1e-4, 0, 1, min_exclusive=True),
        Spec("per_device_train_batch_size", int, 4, 1, 1024),
        Spec("gradient_accumulation_steps", int, 1, 1, 1024),
        Spec("max_input_length", int, 512, 8, 131072, help="tokens per example; longer ones are cut"),
        # 0.9 at most: a ratio of 1 would leave nothing to train on.
        Spec("validation_split_ratio", float, 0.2, 0, 0.9,
             help="share of train held out for eval loss when there is no validation channel"),
        Spec("train_data_split_seed", int, 0, 0, 2**31 - 1),
        Spec("warmup_ratio", float, 0.1, 0, 1),
        Spec("weight_decay", float, 0.0, 0, 1),
        Spec("lr_scheduler_type", str, "linear", choices=SCHEDULERS),
        Spec("instruction_tuned", bool, False, help="instruction/context/response JSON lines, prompt masked"),
        Spec("lora_r", int, 8, 0, 1024, help="LoRA rank; 0 = full fine-tuning"),
        Spec("lora_alpha", int, 32, 1, 4096),
        Spec("lora_dropout", float, 0.05, 0, 1),
        Spec("merge_weights", bool, True, help="ship merged weights (else the adapter plus the base reference)"),
        Spec("seed", int, 10, 0, 2**31 - 1),
        Spec("logging_steps", int, 1, 1, 100000, help="steps between progress lines"),
        Spec("save_steps", int, 10, 1, 100000, help="steps between checkpoints"),
        Spec("accept_eula", bool, False, help="accept the base model's licence (gated models)"),
    )
}  # fmt: skip


def defaults_for(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Typed defaults, with a catalog entry's ``training_defaults`` applied (checked like user values)."""
    values = {name: spec.default for name, spec in SPECS.items()}
    for key, raw in (overrides or {}).items():
        if key not in SPECS:
            raise HyperparameterError(key, f"training default {key!r} is not a known hyperparameter")
        values[key] = SPECS[key].convert(raw)
    return values


def parse(given: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The full typed set: defaults, then ``given`` (strings or values); the first bad key raises.

    Unknown keys raise too, naming the known ones: a misspelt ``learning_rte`` must not be
    silently ignored while the job trains with the default.
    """
    values = defaults_for(overrides)
    for key, raw in given.items():
        spec = SPECS.get(key)
        if spec is None:
            if key.startswith(("sagemaker_", "_")):  # the SageMaker SDK adds its own bookkeeping keys
                continue
            raise HyperparameterError(key, f"unknown hyperparameter {key!r}; known: {', '.join(SPECS)}")
        values[key] = spec.convert(_unquote(raw))
    if values["lora_r"] == 0 and not values["merge_weights"]:
        raise HyperparameterError(
            "merge_weights", "merge_weights=false needs LoRA (lora_r > 0): full fine-tuning has no adapter"
        )
    return values


def _unquote(raw: Any) -> Any:
    """A JSON-encoded string value (``'"1"'``) as the string it encodes.

    The SageMaker SDK's JumpStart estimators send every hyperparameter JSON-encoded; SageMaker's
    training toolkit decodes them before a script sees them, so we do too. Anything else is kept.
    """
    if isinstance(raw, str) and len(raw) >= 2 and raw[0] == raw[-1] == '"':
        try:
            decoded = json.loads(raw)
        except ValueError:
            return raw
        return decoded if isinstance(decoded, str) else raw
    return raw


def to_strings(values: Mapping[str, Any]) -> dict[str, str]:
    """The wire form (HyperParameters is string to string): booleans as ``true``/``false``."""
    return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in values.items()}
