"""The model catalog: ready-to-deploy model specs, their licences and EULA gating.

The catalog ships as ``catalog.json`` inside the package; a ``catalog.json`` in the state
directory extends it (new ids are added; an entry with an existing id overrides that entry's
fields, so ``{"id": "smollm2", "default_env": {...}}`` is enough to change one thing).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from .filters import Filter, parse_filter
from .templates import TEMPLATES

__all__ = [
    "ACCEPT_EULA_ATTRIBUTE",
    "Catalog",
    "CatalogError",
    "CatalogModel",
    "EulaRequiredError",
    "UnknownModelError",
    "check_eula",
    "eula_accepted",
    "load_catalog",
    "packaged_catalog_path",
]

CATALOG_FILE = "catalog.json"
ACCEPT_EULA_ATTRIBUTE = "accept_eula"
_SOURCES = ("bundled", "hub")


class CatalogError(Exception):
    """The catalog or an entry in it is unusable; the message says what to fix."""


class UnknownModelError(CatalogError, KeyError):
    """No catalog entry has this id; the message lists the closest ids."""

    def __init__(self, model_id: str, suggestions: list[str]) -> None:
        hint = f"; did you mean: {', '.join(suggestions)}?" if suggestions else ""
        message = f"no model {model_id!r} in the catalog{hint} (see `streamhost catalog list`)"
        super().__init__(message)
        self.model_id = model_id
        self.suggestions = suggestions

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class EulaRequiredError(CatalogError):
    """The model's licence must be accepted before it is deployed or invoked."""

    def __init__(self, model: CatalogModel) -> None:
        super().__init__(
            f"model {model.id!r} ({model.hub_id}) is under the {model.licence} licence, which requires "
            f"accepting its end-user licence agreement: read {model.eula_url or 'the licence'} and "
            "accept it with `--accept-eula`, `accept_eula=True`, or the custom attribute "
            f"'{ACCEPT_EULA_ATTRIBUTE}=true'"
        )
        self.model_id = model.id


@dataclass(frozen=True)
class CatalogModel:
    """One catalog entry: where the weights come from, how to serve and prompt the model."""

    id: str
    hub_id: str
    name: str
    licence: str
    task: str = "llm"
    framework: str = "huggingface"
    source: str = "hub"  # "bundled" (ships with streamhost) or "hub" (downloaded by hub id)
    default: bool = False
    eula_required: bool = False
    eula_url: str | None = None
    prompt_template: str = "tokenizer"
    default_env: dict[str, str] = field(default_factory=dict)
    recommended_parameters: dict[str, Any] = field(default_factory=dict)
    training_defaults: dict[str, str] = field(default_factory=dict)  # fine-tuning hyperparameter defaults
    min_resources: str = ""
    description: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CatalogModel:
        """Validate one JSON entry; errors name the entry and the offending key."""
        if not isinstance(data, Mapping):
            raise CatalogError(f"a catalog entry must be an object, got {type(data).__name__}")
        label = data.get("id", "<entry without id>")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CatalogError(f"catalog entry {label!r}: unknown key(s) {unknown}; allowed: {sorted(known)}")
        missing = [name for name in ("id", "hub_id", "name", "licence") if not data.get(name)]
        if missing:
            raise CatalogError(f"catalog entry {label!r}: missing {', '.join(missing)}")
        for name in ("id", "hub_id", "name", "licence", "task", "framework", "prompt_template"):
            if name in data and not isinstance(data[name], str):
                raise CatalogError(f"catalog entry {label!r}: {name} must be a string")
        for name in ("eula_required", "default"):
            if name in data and not isinstance(data[name], bool):
                raise CatalogError(f"catalog entry {label!r}: {name} must be true or false")
        for name in ("default_env", "recommended_parameters", "training_defaults"):
            if name in data and not isinstance(data[name], Mapping):
                raise CatalogError(f"catalog entry {label!r}: {name} must be an object")
        if data.get("source", "hub") not in _SOURCES:
            raise CatalogError(f"catalog entry {label!r}: source must be one of {list(_SOURCES)}")
        if data.get("prompt_template", "tokenizer") not in TEMPLATES:
            raise CatalogError(
                f"catalog entry {label!r}: unknown prompt_template {data.get('prompt_template')!r}; "
                f"choose one of {list(TEMPLATES)}"
            )
        if data.get("eula_required") and not data.get("eula_url"):
            raise CatalogError(f"catalog entry {label!r}: eula_required needs an eula_url")
        values = dict(data)
        values["default_env"] = {str(k): str(v) for k, v in dict(data.get("default_env", {})).items()}
        values["recommended_parameters"] = dict(data.get("recommended_parameters", {}))
        values["training_defaults"] = {str(k): str(v) for k, v in dict(data.get("training_defaults", {})).items()}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def stop_sequences(self) -> list[str]:
        return list(self.recommended_parameters.get("stop", []))


class Catalog:
    """An ordered, id-keyed set of CatalogModels with lookup, filtering and the default model."""

    def __init__(self, models: list[CatalogModel] | None = None) -> None:
        self._models: dict[str, CatalogModel] = {}
        for model in models or []:
            self._models[model.id] = model

    def __len__(self) -> int:
        return len(self._models)

    def __iter__(self) -> Iterator[CatalogModel]:
        return iter(self._models.values())

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._models

    def ids(self) -> list[str]:
        return list(self._models)

    def get(self, model_id: str) -> CatalogModel:
        """The entry with this id (or, failing that, this hub id); UnknownModelError names close ids."""
        model = self.find(model_id)
        if model is None:
            raise UnknownModelError(model_id, self.suggest(model_id))
        return model

    def find(self, ref: str) -> CatalogModel | None:
        """The entry whose id or hub id is ``ref`` (hub ids compare case-insensitively), else None."""
        if ref in self._models:
            return self._models[ref]
        folded = ref.lower()
        for model in self._models.values():
            if model.hub_id.lower() == folded:
                return model
        return None

    def suggest(self, ref: str, limit: int = 5) -> list[str]:
        """Ids that look like ``ref``: close spellings first, then ids containing it."""
        ids = self.ids()
        close = difflib.get_close_matches(ref, ids, n=limit, cutoff=0.6)
        folded = ref.lower()
        contained = [i for i in ids if folded and folded in i.lower() and i not in close]
        return (close + contained)[:limit]

    def default(self) -> CatalogModel:
        for model in self._models.values():
            if model.default:
                return model
        raise CatalogError('the catalog has no default model (an entry with "default": true)')

    def list(self, filter: str | Filter | None = None) -> list[CatalogModel]:
        """Entries matching ``filter`` (e.g. ``"task == llm and eula_required == false"``)."""
        if filter is None or (isinstance(filter, str) and not filter.strip()):
            return list(self._models.values())
        parsed = parse_filter(filter)
        parsed.check_fields(f.name for f in fields(CatalogModel))
        return [m for m in self._models.values() if parsed.matches(m.to_dict())]

    def merged(self, entries: Sequence[Mapping[str, Any]], origin: str = "extension") -> Catalog:
        """A new catalog with ``entries`` layered on top (same id: fields override)."""
        result = dict(self._models)
        for raw in entries:
            if not isinstance(raw, Mapping) or not raw.get("id"):
                raise CatalogError(f'{origin}: every entry needs an "id"')
            base = result.get(raw["id"])
            data = {**base.to_dict(), **raw} if base is not None else dict(raw)
            try:
                model = CatalogModel.from_dict(data)
            except CatalogError as exc:
                raise CatalogError(f"{origin}: {exc}") from None
            if model.default:  # one default: the latest to claim it wins
                result = {k: replace(v, default=False) for k, v in result.items()}
            result[model.id] = model
        return Catalog(list(result.values()))


def eula_accepted(custom_attributes: str | None) -> bool:
    """Whether a SageMaker ``CustomAttributes`` value accepts the EULA (``accept_eula=true``).

    The header holds ``;``- or ``,``-separated ``key=value`` pairs; the comparison ignores case
    and spaces, as clients write ``accept_eula=true`` and ``accept_eula=True`` alike.
    """
    if not custom_attributes:
        return False
    for pair in custom_attributes.replace(",", ";").split(";"):
        key, sep, value = pair.partition("=")
        if sep and key.strip().lower() == ACCEPT_EULA_ATTRIBUTE and value.strip().lower() == "true":
            return True
    return False


def check_eula(model: CatalogModel, accepted: bool) -> None:
    """Raise EulaRequiredError when the model needs its EULA accepted and it was not."""
    if model.eula_required and not accepted:
        raise EulaRequiredError(model)


def packaged_catalog_path() -> Path:
    return Path(str(resources.files("streamhost.catalog").joinpath(CATALOG_FILE)))


def _read_entries(path: Path) -> list[Mapping[str, Any]]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CatalogError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read ({exc.strerror})") from None
    entries = document.get("models") if isinstance(document, dict) else document
    if not isinstance(entries, list):
        raise CatalogError(f'{path}: expected a list of models or an object with a "models" list')
    return entries


def load_catalog(state_dir: Path | str | None = None) -> Catalog:
    """The packaged catalog, extended by ``<state_dir>/catalog.json`` when that file exists."""
    catalog = Catalog().merged(_read_entries(packaged_catalog_path()), origin="packaged catalog")
    if state_dir is not None:
        extension = Path(state_dir) / CATALOG_FILE
        if extension.is_file():
            catalog = catalog.merged(_read_entries(extension), origin=str(extension))
    return catalog
