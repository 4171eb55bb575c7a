"""Prompt templates render the exact training formats, character for character."""

from __future__ import annotations

import pytest

from streamhost.catalog.templates import (
    TEMPLATES,
    TemplateError,
    render_prompt,
    template_stop_sequences,
    validate_messages,
)

USER = [{"role": "user", "content": "Hi"}]
SYSTEM = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
MULTI = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "How are you?"},
]
NO_SYSTEM_MULTI = MULTI[1:]

GOLDEN = {
    ("llama2", "user"): "<s>[INST] Hi [/INST]",
    ("llama2", "system"): "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]",
    (
        "llama2",
        "multi",
    ): "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] How are you? [/INST]",
    ("mistral", "user"): "<s>[INST] Hi [/INST]",
    ("mistral", "system"): "<s>[INST] Be brief.\n\nHi [/INST]",
    ("mistral", "multi"): "<s>[INST] Be brief.\n\nHi [/INST]Hello!</s>[INST] How are you? [/INST]",
    ("falcon", "user"): "User: Hi\nFalcon:",
    ("falcon", "system"): "System: Be brief.\nUser: Hi\nFalcon:",
    ("falcon", "multi"): "System: Be brief.\nUser: Hi\nFalcon: Hello!\nUser: How are you?\nFalcon:",
    ("chatml", "user"): "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    (
        "chatml",
        "system",
    ): "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    ("chatml", "multi"): (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n<|im_start|>assistant\n"
    ),
    ("rinna", "user"): "ユーザー: Hi<NL>システム: ",
    ("rinna", "system"): "ユーザー: Be brief.<NL>Hi<NL>システム: ",
    ("rinna", "multi"): "ユーザー: Be brief.<NL>Hi<NL>システム: Hello!<NL>ユーザー: How are you?<NL>システム: ",
    ("rinna-bilingual", "user"): "ユーザー: Hi\nシステム: ",
    ("rinna-bilingual", "multi"): "ユーザー: Be brief.\nHi\nシステム: Hello!\nユーザー: How are you?\nシステム: ",
    ("none", "user"): "Hi",
    ("none", "system"): "Be brief.\n\nHi",
}
CONVERSATIONS = {"user": USER, "system": SYSTEM, "multi": MULTI}


@pytest.mark.parametrize(("template", "case"), sorted(GOLDEN), ids=[f"{t}-{c}" for t, c in sorted(GOLDEN)])
def test_golden_prompts(template, case):
    assert render_prompt(template, CONVERSATIONS[case]) == GOLDEN[(template, case)]


def test_llama2_multi_turn_without_system_and_stripping_like_meta():
    messages = [
        {"role": "user", "content": " Hi "},
        {"role": "assistant", "content": "Hello! "},
        {"role": "user", "content": "日本語で 🦙"},
    ]
    assert render_prompt("llama2", messages) == "<s>[INST] Hi [/INST] Hello! </s><s>[INST] 日本語で 🦙 [/INST]"


def test_rinna_replaces_newlines_inside_utterances():
    messages = [{"role": "user", "content": "一行目\n二行目"}]
    assert render_prompt("rinna", messages) == "ユーザー: 一行目<NL>二行目<NL>システム: "


def test_without_generation_prompt_a_finished_conversation_renders_as_training_text():
    done = NO_SYSTEM_MULTI[:2]
    assert render_prompt("chatml", done, add_generation_prompt=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    )
    assert render_prompt("llama2", done, add_generation_prompt=False) == "<s>[INST] Hi [/INST] Hello! </s>"
    assert render_prompt("mistral", done, add_generation_prompt=False) == "<s>[INST] Hi [/INST]Hello!</s>"
    assert render_prompt("falcon", done, add_generation_prompt=False) == "User: Hi\nFalcon: Hello!"


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        ([{"role": "user"}], "content must be a string"),
        ([{"content": "x"}], "has no 'role'"),
        ([{"role": "robot", "content": "x"}], "'robot' is not one of"),
        ([{"role": "assistant", "content": "x"}], "must alternate"),
        (
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
            r"messages\[1\] is 'user' but 'assistant'",
        ),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "only allowed first"),
        ([{"role": "system", "content": "s"}], "at least one user message"),
        (NO_SYSTEM_MULTI[:2], "last message must be the user's"),
    ],
)
def test_bad_conversations_get_clear_errors(messages, message):
    with pytest.raises(TemplateError, match=message):
        render_prompt("llama2", messages)


def test_unknown_template_lists_choices():
    with pytest.raises(TemplateError, match="unknown prompt template 'vicuna'.*llama2"):
        render_prompt("vicuna", USER)


def test_stop_sequences():
    assert template_stop_sequences("llama2") == ["</s>"]
    assert template_stop_sequences("chatml") == ["<|im_end|>"]
    assert template_stop_sequences("falcon") == ["\nUser:", "<|endoftext|>"]
    assert template_stop_sequences("tokenizer") == []
    assert template_stop_sequences("rinna") == ["</s>", "<NL>ユーザー:"]
    assert all(isinstance(template_stop_sequences(t), list) for t in TEMPLATES)
    with pytest.raises(TemplateError, match="unknown prompt template"):
        template_stop_sequences("nope")


def test_validate_messages_returns_plain_dicts():
    assert validate_messages([{"role": "user", "content": "x", "name": "bob"}]) == [{"role": "user", "content": "x"}]


# --- the tokenizer's own chat template (SmolLM2: ChatML with a default system prompt) ------------


def test_tokenizer_template_matches_apply_chat_template(smollm2_tokenizer):
    text = render_prompt("tokenizer", SYSTEM, tokenizer=smollm2_tokenizer)
    assert text == GOLDEN[("chatml", "system")]
    default_system = render_prompt("tokenizer", USER, tokenizer=smollm2_tokenizer)
    assert default_system.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert default_system.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert template_stop_sequences("tokenizer", smollm2_tokenizer) == ["<|im_end|>"]


def test_tokenizer_template_needs_a_tokenizer_with_a_template(smollm2_tokenizer):
    with pytest.raises(TemplateError, match="needs the model's tokenizer"):
        render_prompt("tokenizer", USER)

    class Bare:
        chat_template = None
        name_or_path = "some/base-model"

    with pytest.raises(TemplateError, match="'some/base-model' has no chat template"):
        render_prompt("tokenizer", USER, tokenizer=Bare())


def test_tokenizer_template_exceptions_become_template_errors(smollm2_tokenizer):
    import copy

    strict = copy.copy(smollm2_tokenizer)
    strict.chat_template = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}x"
    )
    with pytest.raises(TemplateError, match="rejected the messages: first must be user"):
        render_prompt("tokenizer", SYSTEM, tokenizer=strict)
