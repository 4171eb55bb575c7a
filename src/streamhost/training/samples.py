"""A small synthetic instruction set with one right answer per question (for tests, benchmarks, demos).

Dolly-style records (instruction, context, response) whose responses follow one terse house style
("The capital of France is Paris."). An instruct model answers such questions correctly but in its
own words, so ROUGE-L against these references is modest before tuning and rises once a short LoRA
run has taught the style: a quick, honest signal that fine-tuning changed the model's behaviour.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Egypt": "Cairo", "Kenya": "Nairobi",
    "Canada": "Ottawa", "Mexico": "Mexico City", "Brazil": "Brasilia", "Argentina": "Buenos Aires", "Peru": "Lima",
    "Russia": "Moscow", "Greece": "Athens", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki",
    "Poland": "Warsaw", "Austria": "Vienna", "Ireland": "Dublin", "Turkey": "Ankara", "Iran": "Tehran",
    "Thailand": "Bangkok", "Vietnam": "Hanoi", "Australia": "Canberra", "Chile": "Santiago", "Cuba": "Havana",
}  # fmt: skip
OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "light": "dark", "happy": "sad", "early": "late", "open": "closed",
    "full": "empty", "hard": "soft", "high": "low", "rich": "poor", "young": "old", "strong": "weak", "wet": "dry",
    "loud": "quiet", "thick": "thin", "clean": "dirty", "long": "short", "heavy": "light", "first": "last",
}  # fmt: skip


def _records(rng: random.Random, count: int) -> list[dict[str, str]]:
    records = []
    for _ in range(count):
        kind = rng.randrange(3)
        if kind == 0:
            country = rng.choice(list(CAPITALS))
            records.append({"instruction": f"What is the capital of {country}?", "context": "",
                            "response": f"The capital of {country} is {CAPITALS[country]}."})  # fmt: skip
        elif kind == 1:
            word = rng.choice(list(OPPOSITES))
            records.append({"instruction": f"What is the opposite of the word \"{word}\"?", "context": "",
                            "response": f"The opposite of \"{word}\" is \"{OPPOSITES[word]}\"."})  # fmt: skip
        else:
            a, b = rng.randrange(2, 50), rng.randrange(2, 50)
            records.append({"instruction": "Add the two numbers in the context.", "context": f"{a} and {b}",
                            "response": f"{a} + {b} = {a + b}."})  # fmt: skip
    return records


def instruction_set(train: int = 200, held_out: int = 20, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``(train, held_out)`` records; the held-out ones are drawn from a separate stream."""
    rng = random.Random(seed)
    return _records(rng, train), _records(random.Random(seed + 10_000), held_out)


def write_jsonl(records: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path
