"""Base vs tuned: stream both endpoints' answers to held-out examples and score them with ROUGE-L.

Each example's prompt is rendered exactly as the trainer rendered training prompts (same
``template.json`` or the Dolly-style default), both endpoints answer it greedily (the comparison
should not depend on sampling luck), and ROUGE-L F1 against the reference is computed per row
with Google's ``rouge-score`` (the implementation behind Hugging Face ``evaluate``'s ROUGE).
The overall figure is the mean over rows.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .data import DEFAULT_TEMPLATE, DataError, render_prompt

__all__ = ["EvalRow", "Report", "load_eval_examples", "rouge_l", "run_comparison", "to_markdown"]


@dataclass
class EvalRow:
    input: str
    reference: str
    base: str
    tuned: str
    rouge_l_base: float
    rouge_l_tuned: float


@dataclass
class Report:
    base_endpoint: str
    tuned_endpoint: str
    rows: list[EvalRow]

    @property
    def rouge_l_base(self) -> float:
        return statistics.fmean(r.rouge_l_base for r in self.rows) if self.rows else 0.0

    @property
    def rouge_l_tuned(self) -> float:
        return statistics.fmean(r.rouge_l_tuned for r in self.rows) if self.rows else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"base_endpoint": self.base_endpoint, "tuned_endpoint": self.tuned_endpoint,
                "rouge_l": {"base": self.rouge_l_base, "tuned": self.rouge_l_tuned}, "examples": len(self.rows),
                "rows": [asdict(r) for r in self.rows]}  # fmt: skip


_scorer = None


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (longest common subsequence of words, stemmed)."""
    global _scorer
    if _scorer is None:
        from rouge_score import rouge_scorer

        _scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(_scorer.score(reference, prediction)["rougeL"].fmeasure)


def load_eval_examples(path: Path, template: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """``(prompt, reference)`` per line: instruction/context/response rendered through the template,
    or a ready ``prompt``/``inputs`` with ``response``/``completion``/``reference``."""
    template = template or DEFAULT_TEMPLATE
    examples = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{Path(path).name} line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{Path(path).name} line {number}: expected a JSON object")
        reference = next(
            (record[k] for k in ("response", "completion", "reference") if isinstance(record.get(k), str)), None
        )
        prompt: str | None
        if "instruction" in record:
            prompt = render_prompt({"context": "", **record}, template)
        else:
            prompt = next((record[k] for k in ("prompt", "inputs") if isinstance(record.get(k), str)), None)
        if prompt is None or reference is None:
            raise DataError(
                f"{Path(path).name} line {number}: needs instruction (or prompt) and response (or reference)"
            )
        examples.append((prompt, reference))
    if not examples:
        raise DataError(f"{Path(path).name}: no examples")
    return examples


def run_comparison(examples: list[tuple[str, str]], answer_base: Callable[[str], str], answer_tuned: Callable[[str], str],
                   base_name: str, tuned_name: str, progress: Callable[[int, EvalRow], None] | None = None) -> Report:  # fmt: skip
    """Ask both endpoints (in parallel) for each example; score each answer against the reference."""
    rows: list[EvalRow] = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for index, (prompt, reference) in enumerate(examples):
            base_future = pool.submit(answer_base, prompt)
            tuned_future = pool.submit(answer_tuned, prompt)
            base, tuned = base_future.result().strip(), tuned_future.result().strip()
            row = EvalRow(prompt, reference, base, tuned, rouge_l(base, reference), rouge_l(tuned, reference))
            rows.append(row)
            if progress is not None:
                progress(index, row)
    return Report(base_name, tuned_name, rows)


def _cell(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def to_markdown(report: Report) -> str:
    lines = [
        f"# Base vs tuned: `{report.base_endpoint}` vs `{report.tuned_endpoint}`",
        "",
        (
            f"ROUGE-L (F1, mean over {len(report.rows)} examples): base **{report.rouge_l_base:.3f}**, "
            f"tuned **{report.rouge_l_tuned:.3f}**"
        ),
        "",
        "| # | input | reference | base answer | tuned answer | ROUGE-L base | ROUGE-L tuned |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(report.rows, start=1):
        lines.append(f"| {i} | {_cell(r.input)} | {_cell(r.reference)} | {_cell(r.base)} | {_cell(r.tuned)} | "
                     f"{r.rouge_l_base:.3f} | {r.rouge_l_tuned:.3f} |")  # fmt: skip
    return "\n".join(lines) + "\n"
