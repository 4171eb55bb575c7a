"""The model catalog: packaged entries, state-dir extension, filters and EULA gating."""

from __future__ import annotations

import json

import pytest

from streamhost.catalog.filters import FilterError, FilterSyntaxError, parse_filter
from streamhost.catalog.specs import (
    Catalog,
    CatalogError,
    CatalogModel,
    EulaRequiredError,
    UnknownModelError,
    check_eula,
    eula_accepted,
    load_catalog,
    packaged_catalog_path,
)
from streamhost.catalog.templates import TEMPLATES, render_prompt


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def test_packaged_catalog_is_package_data_and_valid_json():
    document = json.loads(packaged_catalog_path().read_text(encoding="utf-8"))
    assert isinstance(document["models"], list) and len(document["models"]) >= 11


def test_default_model_is_the_bundled_smollm2(catalog):
    model = catalog.default()
    assert model.id == "smollm2" and model.source == "bundled"
    assert model.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert model.licence == "apache-2.0" and not model.eula_required
    assert model.prompt_template == "tokenizer"


@pytest.mark.parametrize(
    ("model_id", "hub_id", "licence", "eula", "template"),
    [
        ("meta-textgeneration-llama-2-7b-f", "meta-llama/Llama-2-7b-chat-hf", "llama2", True, "llama2"),
        ("meta-textgeneration-llama-2-13b-f", "meta-llama/Llama-2-13b-chat-hf", "llama2", True, "llama2"),
        ("meta-textgeneration-llama-2-70b-f", "meta-llama/Llama-2-70b-chat-hf", "llama2", True, "llama2"),
        ("huggingface-llm-falcon-7b-instruct-bf16", "tiiuae/falcon-7b-instruct", "apache-2.0", False, "falcon"),
        ("huggingface-llm-falcon-40b-instruct-bf16", "tiiuae/falcon-40b-instruct", "apache-2.0", False, "falcon"),
        ("huggingface-llm-falcon-180b-chat-bf16", "tiiuae/falcon-180B-chat", "falcon-180b", True, "falcon"),
        ("huggingface-llm-mistral-7b", "mistralai/Mistral-7B-v0.1", "apache-2.0", False, "none"),
        ("huggingface-llm-mistral-7b-instruct", "mistralai/Mistral-7B-Instruct-v0.1", "apache-2.0", False, "mistral"),
        (
            "huggingface-llm-rinna-3-6b-instruction-ppo-bf16",
            "rinna/japanese-gpt-neox-3.6b-instruction-ppo",
            "mit",
            False,
            "rinna",
        ),
        (
            "huggingface-llm-rinna-bilingual-4b-instruction-ppo-bf16",
            "rinna/bilingual-gpt-neox-4b-instruction-ppo",
            "mit",
            False,
            "rinna-bilingual",
        ),
    ],
)
def test_hub_entries(catalog, model_id, hub_id, licence, eula, template):
    model = catalog.get(model_id)
    assert (model.hub_id, model.licence, model.eula_required, model.prompt_template) == (
        hub_id,
        licence,
        eula,
        template,
    )
    assert model.source == "hub" and model.task == "llm" and model.framework == "huggingface"
    assert int(model.default_env["MAX_INPUT_TOKENS"]) < int(model.default_env["MAX_TOTAL_TOKENS"])
    assert int(model.default_env["SM_NUM_GPUS"]) >= 1
    assert model.recommended_parameters["max_new_tokens"] > 0 and model.min_resources
    assert bool(model.eula_url) == eula
    # every entry's template renders a prompt
    assert render_prompt(model.prompt_template, [{"role": "user", "content": "hi"}])


def test_llama2_recommends_the_samples_stop_token(catalog):
    assert catalog.get("meta-textgeneration-llama-2-7b-f").stop_sequences == ["</s>"]


def test_every_entry_is_complete(catalog):
    for model in catalog:
        assert model.prompt_template in TEMPLATES
        assert {"max_new_tokens", "temperature", "top_p", "stop"} <= set(model.recommended_parameters)


def test_lookup_by_hub_id(catalog):
    assert catalog.get("meta-llama/llama-2-7b-chat-hf").id == "meta-textgeneration-llama-2-7b-f"
    assert catalog.find("not/there") is None


def test_unknown_id_suggests_close_ids(catalog):
    with pytest.raises(UnknownModelError) as info:
        catalog.get("meta-textgeneration-llama-2-7b")
    assert isinstance(info.value, KeyError) and isinstance(info.value, CatalogError)
    assert "meta-textgeneration-llama-2-7b-f" in info.value.suggestions
    assert str(info.value).startswith("no model 'meta-textgeneration-llama-2-7b' in the catalog; did you mean")
    with pytest.raises(UnknownModelError, match="huggingface-llm-mistral-7b"):
        catalog.get("mistral")


# --- filters ----------------------------------------------------------------------------------


def _ids(catalog, expression):
    return {m.id for m in catalog.list(filter=expression)}


def test_filters_select_the_right_models(catalog):
    everything = {m.id for m in catalog}
    assert _ids(catalog, "task == llm") == everything
    assert _ids(catalog, None) == everything
    assert _ids(catalog, "framework == huggingface and eula_required == false") == everything - {
        "meta-textgeneration-llama-2-7b-f",
        "meta-textgeneration-llama-2-13b-f",
        "meta-textgeneration-llama-2-70b-f",
        "huggingface-llm-falcon-180b-chat-bf16",
    }
    assert _ids(catalog, "licence == mit or prompt_template == mistral") == {
        "huggingface-llm-rinna-3-6b-instruction-ppo-bf16",
        "huggingface-llm-rinna-bilingual-4b-instruction-ppo-bf16",
        "huggingface-llm-mistral-7b-instruct",
    }
    assert _ids(catalog, "task == llm or licence != apache-2.0") == everything
    assert _ids(catalog, "not (eula_required == true or source == hub)") == {"smollm2"}
    assert _ids(catalog, 'hub_id == "tiiuae/falcon-180B-chat"') == {"huggingface-llm-falcon-180b-chat-bf16"}
    assert _ids(catalog, "default_env.SM_NUM_GPUS == 8") == {
        "meta-textgeneration-llama-2-70b-f",
        "huggingface-llm-falcon-180b-chat-bf16",
    }
    assert _ids(catalog, "recommended_parameters.stop == '</s>' and licence == llama2") == {
        "meta-textgeneration-llama-2-7b-f",
        "meta-textgeneration-llama-2-13b-f",
        "meta-textgeneration-llama-2-70b-f",
    }


def test_precedence_and_binds_tighter_than_or():
    record = {"a": "1", "b": "2", "c": "3"}
    assert parse_filter("a == 1 or b == 9 and c == 9").matches(record)
    assert not parse_filter("(a == 1 or b == 9) and c == 9").matches(record)
    assert parse_filter("not a == 2 AND NOT (b == 3)").matches(record)
    assert parse_filter("A == 1").matches(record)  # field names ignore case
    assert parse_filter("missing == none").matches(record)


def test_quoted_values_may_hold_spaces_keywords_and_escapes():
    record = {"name": 'Llama "2" and more', "word": "or"}
    assert parse_filter(r'name == "Llama \"2\" and more"').matches(record)
    assert parse_filter("word == 'or'").matches(record)


@pytest.mark.parametrize(
    ("expression", "position", "reason"),
    [
        ("task = llm", 5, "use '=='"),
        ("task == ", 8, "expected a value"),
        ("task llm", 5, "expected '==' or '!='"),
        ("(task == llm", 12, "expected ')'"),
        ("task == llm)", 11, "expected 'and', 'or'"),
        ("task == llm and", 15, "expected a field name"),
        ('name == "open', 8, "unterminated"),
        ("task == llm & x", 12, "unexpected character '&'"),
        ("", 0, "empty filter"),
        ("task == or", 8, "quote it"),
    ],
)
def test_syntax_errors_point_at_the_problem(expression, position, reason):
    with pytest.raises(FilterSyntaxError) as info:
        parse_filter(expression)
    assert info.value.position == position
    assert reason in str(info.value)
    assert f"at position {position}" in str(info.value)
    assert str(info.value).endswith(" " * position + "^")


def test_unknown_field_is_named(catalog):
    with pytest.raises(FilterError, match="unknown field 'tsk'.*known fields: .*task"):
        catalog.list("tsk == llm")


def test_filters_never_evaluate_code():
    with pytest.raises(FilterSyntaxError):
        parse_filter("__import__('os').system('true') == 1")


# --- extension file in the state directory ----------------------------------------------------------


def test_state_dir_extension_adds_and_overrides(tmp_path):
    (tmp_path / "catalog.json").write_text(
        json.dumps(
            {
                "models": [
                    {"id": "smollm2", "default_env": {"MAX_TOTAL_TOKENS": "1024", "MAX_INPUT_TOKENS": "512"}},
                    {
                        "id": "my-model",
                        "hub_id": "me/my-model",
                        "name": "Mine",
                        "licence": "other",
                        "eula_required": True,
                        "eula_url": "https://example.com/eula",
                        "prompt_template": "chatml",
                        "default": True,
                    },
                ]
            }
        )
    )
    catalog = load_catalog(tmp_path)
    smol = catalog.get("smollm2")
    assert smol.default_env == {"MAX_TOTAL_TOKENS": "1024", "MAX_INPUT_TOKENS": "512"}
    assert smol.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"  # untouched fields kept
    mine = catalog.get("my-model")
    assert mine.eula_required and mine.task == "llm" and mine.framework == "huggingface"
    assert catalog.default().id == "my-model" and not smol.default
    assert catalog.ids()[-1] == "my-model" and len(catalog) == len(load_catalog()) + 1


def test_missing_state_file_gives_the_packaged_catalog(tmp_path):
    assert load_catalog(tmp_path).ids() == load_catalog(None).ids()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"models": {}}', "expected a list"),
        ('[{"hub_id": "x"}]', 'needs an "id"'),
        ('[{"id": "new"}]', "missing hub_id, name, licence"),
        ('[{"id": "smollm2", "colour": "red"}]', "unknown key"),
        ('[{"id": "smollm2", "eula_required": "yes"}]', "must be true or false"),
        ('[{"id": "smollm2", "prompt_template": "vicuna"}]', "unknown prompt_template 'vicuna'"),
        ('[{"id": "smollm2", "eula_required": true}]', "needs an eula_url"),
    ],
)
def test_bad_extension_files_name_the_file_and_problem(tmp_path, content, message):
    path = tmp_path / "catalog.json"
    path.write_text(content)
    with pytest.raises(CatalogError, match=message) as info:
        load_catalog(tmp_path)
    assert str(path) in str(info.value)


# --- EULA -----------------------------------------------------------------------------------------


def test_eula_gate(catalog):
    llama = catalog.get("meta-textgeneration-llama-2-7b-f")
    with pytest.raises(EulaRequiredError, match="accept_eula=true") as info:
        check_eula(llama, accepted=False)
    assert llama.eula_url in str(info.value) and "--accept-eula" in str(info.value)
    check_eula(llama, accepted=True)
    check_eula(catalog.get("smollm2"), accepted=False)


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("accept_eula=true", True),
        ("accept_eula=True", True),
        ("foo=bar; accept_eula = true", True),
        ("c000b4f9-df62-4c85-a0bf-7c525f9104a4,accept_eula=true", True),
        ("accept_eula=false", False),
        ("accept_eula", False),
        ("xaccept_eula=true", False),
        ("", False),
        (None, False),
    ],
)
def test_eula_from_custom_attributes(header, accepted):
    assert eula_accepted(header) is accepted


def test_round_trip_through_dict(catalog):
    for model in catalog:
        assert CatalogModel.from_dict(model.to_dict()) == model
