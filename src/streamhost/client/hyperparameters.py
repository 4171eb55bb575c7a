"""``retrieve_default`` / ``validate``: a model's fine-tuning hyperparameters, as the SageMaker SDK's
``sagemaker.hyperparameters`` module offers them for JumpStart models.

Both read the same table the platform checks CreateTrainingJob against, with the catalog entry's
``training_defaults`` applied, so a set that passes ``validate`` here is accepted there.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from streamhost.training import hyperparameters as _hp

from .sdk import open_catalog

__all__ = ["HyperparameterError", "describe", "retrieve_default", "validate"]

HyperparameterError = _hp.HyperparameterError


def _overrides(model_id: str | None, state_dir: Path | str | None) -> dict[str, str]:
    if not model_id:
        return {}
    entry = open_catalog(state_dir).find(model_id)
    return dict(entry.training_defaults) if entry is not None else {}


def retrieve_default(model_id: str | None = None, state_dir: Path | str | None = None) -> dict[str, str]:
    """Every hyperparameter's default for ``model_id`` (catalog id or hub id; any other model: the generic defaults), as strings."""
    return _hp.to_strings(_hp.defaults_for(_overrides(model_id, state_dir)))


def validate(model_id: str | None = None, hyperparameters: Mapping[str, Any] | None = None,
             state_dir: Path | str | None = None) -> dict[str, Any]:  # fmt: skip
    """Raise HyperparameterError (a ValueError naming the key and its allowed values) for the first bad one.

    Returns the full typed set the job would train with.
    """
    return _hp.parse(dict(hyperparameters or {}), _overrides(model_id, state_dir))


def describe() -> list[dict[str, Any]]:
    """Each hyperparameter's name, type, default, allowed values and meaning (for docs and ``--help``)."""
    return [{"name": s.name, "type": s.type.__name__, "default": s.default, "allowed": s.allowed(), "help": s.help}
            for s in _hp.SPECS.values()]  # fmt: skip
