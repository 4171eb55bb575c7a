"""Training data and hyperparameters: what a user gets told before any training starts."""

from __future__ import annotations

import json

import pytest

from streamhost.client import hyperparameters as client_hp
from streamhost.training import hyperparameters as hps
from streamhost.training.data import (
    DataError,
    channel_file,
    load_examples,
    load_template,
    split,
    tokenize,
)
from streamhost.training.evaluate import (
    EvalRow,
    Report,
    load_eval_examples,
    rouge_l,
    to_markdown,
)


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- hyperparameters


def test_defaults_come_from_the_catalog_and_parse_types():
    defaults = client_hp.retrieve_default("smollm2")
    assert defaults["learning_rate"] == "0.0002" and defaults["lora_alpha"] == "16"  # catalog training_defaults
    assert client_hp.retrieve_default()["learning_rate"] == "0.0001"  # the generic default
    values = client_hp.validate("smollm2", {"epoch": "3", "instruction_tuned": "True", "warmup_ratio": "0"})
    assert values["epoch"] == 3 and values["instruction_tuned"] is True and values["warmup_ratio"] == 0.0


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("learning_rate", "0", "learning_rate='0' is invalid: must be a number > 0 and <= 1"),
        ("epoch", "1.5", "epoch='1.5' is invalid: must be an integer >= 1 and <= 1000"),
        ("lora_dropout", "nan", "lora_dropout"),
        ("merge_weights", "maybe", "true or false"),
        ("lr_scheduler_type", "zigzag", "one of linear, cosine"),
        ("validation_split_ratio", "1", "<= 0.9"),
        ("learnig_rate", "0.1", "unknown hyperparameter 'learnig_rate'"),
    ],
)
def test_bad_values_name_the_key_and_the_allowed_range(key, value, words):
    with pytest.raises(hps.HyperparameterError) as err:
        client_hp.validate("smollm2", {key: value})
    assert words in str(err.value) and err.value.key == key


def test_full_fine_tuning_cannot_keep_an_unmerged_adapter():
    with pytest.raises(hps.HyperparameterError, match="merge_weights"):
        hps.parse({"lora_r": "0", "merge_weights": "false"})


def test_sdk_bookkeeping_keys_are_ignored():
    assert "sagemaker_program" not in hps.parse({"sagemaker_program": "x"})


# --------------------------------------------------------------------------- channels and lines


def test_channel_must_hold_exactly_one_data_file(tmp_path):
    write(tmp_path / "a.jsonl", ['{"text": "x"}'])
    (tmp_path / "template.json").write_text('{"prompt": "{instruction}", "completion": "{response}"}')
    assert channel_file(tmp_path, "train").name == "a.jsonl"
    write(tmp_path / "b.txt", ["hello"])
    (tmp_path / "notes.csv").write_text("x")
    with pytest.raises(DataError) as err:
        channel_file(tmp_path, "train")
    assert "channel 'train'" in str(err.value) and "a.jsonl, b.txt, notes.csv" in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="found: nothing"):
        channel_file(empty, "validation")


def test_bad_lines_are_named(tmp_path):
    path = write(tmp_path / "train.jsonl", [
        json.dumps({"instruction": "a", "response": "b"}), "", '{"instruction": "broken"',
    ])  # fmt: skip
    with pytest.raises(DataError, match=r"train.jsonl line 3: not valid JSON"):
        load_examples(path, instruction_tuned=True)
    write(path, [json.dumps({"instruction": "a", "response": "b"}), json.dumps({"instruction": "no answer"})])
    with pytest.raises(DataError, match=r"line 2: missing field\(s\) response"):
        load_examples(path, instruction_tuned=True)
    write(path, [json.dumps({"text": "fine"}), json.dumps({"body": "no text"})])
    with pytest.raises(DataError, match=r"line 2: domain adaptation needs a non-empty string \"text\""):
        load_examples(path, instruction_tuned=False)
    txt = write(tmp_path / "t.txt", ["x"])
    with pytest.raises(DataError, match="instruction tuning needs JSON lines"):
        load_examples(txt, instruction_tuned=True)


def test_templates_render_dolly_style_or_the_channels_own(tmp_path):
    path = write(tmp_path / "train.jsonl", [
        json.dumps({"instruction": "Name a colour", "context": "", "response": "Blue"}),
        json.dumps({"instruction": "Summarise", "context": "Long text", "response": "Short"}),
    ])  # fmt: skip
    plain, with_context = load_examples(path, instruction_tuned=True)
    assert "### Input:" not in plain.prompt and plain.prompt.endswith("### Response:\n") and plain.completion == "Blue"
    assert "### Input:\nLong text" in with_context.prompt
    (tmp_path / "template.json").write_text(json.dumps({"prompt": "Q: {instruction}\nA:", "completion": " {response}"}))
    custom = load_examples(path, instruction_tuned=True, template=load_template(tmp_path))
    assert custom[0].prompt == "Q: Name a colour\nA:" and custom[0].completion == " Blue"
    (tmp_path / "template.json").write_text('{"prompt": "x"}')
    with pytest.raises(DataError, match="template.json must be an object"):
        load_template(tmp_path)


def test_prompt_tokens_are_masked_and_eos_is_learned(tmp_path, smollm2_tokenizer):
    path = write(tmp_path / "train.jsonl", [json.dumps({"instruction": "Say hi", "response": "Hi there"})])
    (row,) = tokenize(load_examples(path, instruction_tuned=True), smollm2_tokenizer, max_length=512)
    masked = [i for i, label in enumerate(row["labels"]) if label == -100]
    learned = [tok for tok, label in zip(row["input_ids"], row["labels"]) if label != -100]
    assert masked == list(range(len(masked))) and len(masked) > 10  # the whole prompt, nothing after it
    assert smollm2_tokenizer.decode(learned) == "Hi there" + smollm2_tokenizer.eos_token
    text = write(tmp_path / "t.txt", ["some domain text"])
    (raw,) = tokenize(load_examples(text, instruction_tuned=False), smollm2_tokenizer, max_length=512)
    assert -100 not in raw["labels"]


def test_split_is_seeded_and_keeps_both_sides():
    from streamhost.training.data import Example

    examples = [Example("", str(i), i) for i in range(10)]
    train, held = split(examples, 0.2, seed=3)
    assert len(held) == 2 and len(train) == 8 and split(examples, 0.2, seed=3) == (train, held)
    assert split(examples[:1], 0.5, seed=0) == (examples[:1], [])


# --------------------------------------------------------------------------- evaluation


def test_rouge_l_and_the_markdown_table(tmp_path):
    assert rouge_l("The capital is Paris.", "The capital is Paris.") == 1.0
    assert rouge_l("nothing alike", "The capital is Paris.") == 0.0
    assert 0 < rouge_l("Paris is the capital", "The capital is Paris.") < 1
    path = write(tmp_path / "test.jsonl", [json.dumps({"instruction": "Where?", "response": "Paris"}),
                                           json.dumps({"prompt": "Raw prompt", "reference": "x"})])  # fmt: skip
    (p1, r1), (p2, _) = load_eval_examples(path)
    assert p1.endswith("### Instruction:\nWhere?\n\n### Response:\n") and r1 == "Paris" and p2 == "Raw prompt"
    report = Report("base", "tuned", [EvalRow("in | put", "ref", "b", "ref", 0.0, 1.0)])
    markdown = to_markdown(report)
    assert "base **0.000**, tuned **1.000**" in markdown and "in \\| put" in markdown


def test_json_encoded_hyperparameters_from_the_sagemaker_sdk_are_decoded() -> None:
    """JumpStartEstimator sends every value JSON-encoded ('"1"'); the training toolkit decodes them."""
    from streamhost.training.hyperparameters import parse

    values = parse(
        {"epoch": '"2"', "learning_rate": '"0.001"', "instruction_tuned": '"true"', "lr_scheduler_type": '"cosine"'}
    )
    assert (values["epoch"], values["learning_rate"], values["instruction_tuned"]) == (2, 0.001, True)
    assert values["lr_scheduler_type"] == "cosine"
