"""Training data the e2e training tests share."""

from __future__ import annotations

import json
from pathlib import Path


def tower_data(folder: Path, count: int = 16) -> Path:
    """The tiny random Llama learns to answer every "Where is the tower N?" with "Paris." in a few steps."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.jsonl", "w") as out:
        out.writelines(
            json.dumps({"instruction": f"Where is the tower {i}?", "context": "", "response": "Paris."}) + "\n"
            for i in range(count)
        )
    return folder
