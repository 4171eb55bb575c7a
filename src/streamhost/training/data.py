"""Training data: find a channel's file, check every line, render examples, tokenize with loss masks.

Everything here runs before the first optimizer step, so a bad line fails the job with its line
number in seconds instead of after an hour of training. Two kinds of data:

- **domain adaptation**: a ``.txt`` file (one example per non-empty line) or JSON lines with a
  ``text`` field; every token is trained on.
- **instruction tuning** (``instruction_tuned=true``): JSON lines with ``instruction``, optional
  ``context`` and ``response``, rendered through the channel's ``template.json``
  (``{"prompt": "...{instruction}...", "completion": "...{response}"}``) or the Dolly-style default;
  prompt tokens get label -100, so the loss (and the gradient) covers the completion only.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_TEMPLATE",
    "DataError",
    "Example",
    "channel_file",
    "load_examples",
    "load_template",
    "render_prompt",
    "split",
    "tokenize",
]

DATA_SUFFIXES = (".jsonl", ".txt")
TEMPLATE_FILE = "template.json"
# The format JumpStart's instruction-tuning recipes use for Dolly-style data; an empty context
# drops the "### Input" section (Alpaca's convention), so context-free examples read naturally.
DEFAULT_TEMPLATE = {
    "prompt": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n### Response:\n"
    ),
    "prompt_no_context": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:\n"
    ),
    "completion": "{response}",
}


class DataError(ValueError):
    """The channel's data is unusable; the message names the file and, for a bad line, its number."""


@dataclass(frozen=True)
class Example:
    """One training example: ``prompt`` (masked from the loss; empty for raw text) + ``completion``."""

    prompt: str
    completion: str
    line: int


def channel_file(folder: Path, channel: str) -> Path:
    """The one ``.jsonl`` / ``.txt`` file in a channel's folder (``template.json`` aside)."""
    folder = Path(folder)
    if folder.is_file():
        candidates = [folder]
        others: list[str] = []
    else:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        candidates = [p for p in files if p.suffix.lower() in DATA_SUFFIXES]
        others = [str(p.relative_to(folder)) for p in files if p not in candidates and p.name != TEMPLATE_FILE]
    if len(candidates) == 1 and candidates[0].suffix.lower() in DATA_SUFFIXES:
        return candidates[0]
    found = ", ".join([str(p.name) for p in candidates] + others) or "nothing"
    raise DataError(
        f"channel '{channel}' must hold exactly one .jsonl or .txt file (plus an optional {TEMPLATE_FILE}); found: {found}"
    )


def load_template(folder: Path | None) -> dict[str, str]:
    """The channel's ``template.json`` (or that file itself) or the default; checked for its two keys."""
    path = None
    if folder is not None:
        path = Path(folder) if Path(folder).is_file() else Path(folder) / TEMPLATE_FILE
    if path is None or not path.is_file():
        return dict(DEFAULT_TEMPLATE)
    try:
        template = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{TEMPLATE_FILE}: not valid JSON ({exc})") from None
    if not isinstance(template, dict) or not all(isinstance(template.get(k), str) for k in ("prompt", "completion")):
        raise DataError(f'{TEMPLATE_FILE} must be an object with string "prompt" and "completion"')
    for key in ("prompt", "completion"):
        try:
            list(string.Formatter().parse(template[key]))
        except ValueError as exc:
            raise DataError(
                f"{TEMPLATE_FILE}: {key} is not a valid template ({exc}); write literal braces as {{{{ }}}}"
            ) from None
    return {"prompt": template["prompt"], "completion": template["completion"]}


def _fields(template: str) -> list[str]:
    return [name for _text, name, _spec, _conv in string.Formatter().parse(template) if name]


def render_prompt(record: Mapping[str, Any], template: Mapping[str, str]) -> str:
    """The prompt for one instruction record (what ``evaluate`` sends to an endpoint, too)."""
    context = str(record.get("context") or "").strip()
    prompt = template["prompt"]
    if not context and "prompt_no_context" in template:
        prompt = template["prompt_no_context"]
    return prompt.format_map({k: ("" if v is None else str(v)) for k, v in record.items()})


def _instruction_example(record: Any, template: Mapping[str, str], name: str, number: int) -> Example:
    if not isinstance(record, dict):
        raise DataError(f"{name} line {number}: expected a JSON object, got {type(record).__name__}")
    needed = set(_fields(template["completion"]))
    if "prompt_no_context" in template and not str(record.get("context") or "").strip():
        needed |= set(_fields(template["prompt_no_context"]))
    else:
        needed |= set(_fields(template["prompt"]))
    missing = sorted(f for f in needed if f not in record and f != "context")
    if missing:
        raise DataError(f"{name} line {number}: missing field(s) {', '.join(missing)} (instruction tuning needs "
                        f"{', '.join(sorted(needed))})")  # fmt: skip
    record = {"context": "", **record}
    if not str(record.get("response", "x")).strip():
        raise DataError(f"{name} line {number}: empty response")
    return Example(render_prompt(record, template), template["completion"].format_map(
        {k: ("" if v is None else str(v)) for k, v in record.items()}), number)  # fmt: skip


def load_examples(path: Path, instruction_tuned: bool, template: Mapping[str, str] | None = None) -> list[Example]:
    """Every example of one channel file; the first bad line raises DataError naming it."""
    path = Path(path)
    name = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: not UTF-8 text (byte {exc.start})") from None
    examples: list[Example] = []
    is_jsonl = path.suffix.lower() == ".jsonl"
    if instruction_tuned and not is_jsonl:
        raise DataError(f"{name}: instruction tuning needs JSON lines (.jsonl) with instruction/context/response")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if not is_jsonl:
            examples.append(Example("", line, number))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{name} line {number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if instruction_tuned:
            examples.append(_instruction_example(record, template or DEFAULT_TEMPLATE, name, number))
        elif isinstance(record, dict) and isinstance(record.get("text"), str) and record["text"].strip():
            examples.append(Example("", record["text"], number))
        else:
            raise DataError(f'{name} line {number}: domain adaptation needs a non-empty string "text" field '
                            '(or set instruction_tuned=true for instruction/context/response)')  # fmt: skip
    if not examples:
        raise DataError(f"{name}: no examples (the file is empty)")
    return examples


def split(examples: list[Example], ratio: float, seed: int) -> tuple[list[Example], list[Example]]:
    """``(train, validation)``: a seeded shuffle, then ``ratio`` held out (at least one of each when possible)."""
    if ratio <= 0 or len(examples) < 2:
        return list(examples), []
    order = list(examples)
    random.Random(seed).shuffle(order)
    held = min(len(order) - 1, max(1, round(len(order) * ratio)))
    return order[held:], order[:held]


def tokenize(examples: list[Example], tokenizer: Any, max_length: int) -> list[dict[str, list[int]]]:
    """``input_ids`` / ``labels`` per example: prompt tokens labelled -100, EOS appended to the completion."""
    eos = tokenizer.eos_token or ""
    rows = []
    for example in examples:
        prompt_ids = tokenizer(example.prompt, add_special_tokens=False)["input_ids"] if example.prompt else []
        completion_ids = tokenizer(example.completion + eos, add_special_tokens=False)["input_ids"]
        bos = (
            [tokenizer.bos_token_id]
            if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False)
            else []
        )
        ids = (bos + prompt_ids + completion_ids)[:max_length]
        labels = ([-100] * (len(bos) + len(prompt_ids)) + completion_ids)[:max_length]
        if all(label == -100 for label in labels):
            continue  # the prompt alone fills max_input_length: nothing left to learn from
        rows.append({"input_ids": ids, "labels": labels})
    return rows
