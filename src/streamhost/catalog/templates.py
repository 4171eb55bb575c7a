"""Prompt templates: turn chat messages into the exact prompt text a model was trained on.

A chat model answers well only when its prompt matches its training format to the character,
so each template below follows its reference:

- ``llama2``: Meta's ``chat_completion`` / the Llama-2-chat tokenizer template
  (``<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {answer} </s><s>[INST] ...``).
- ``mistral``: the Mistral-7B-Instruct-v0.1 tokenizer template
  (``<s>[INST] {user} [/INST]{answer}</s>[INST] ...``); a system prompt is put before the first
  user message, separated by a blank line.
- ``falcon``: the Falcon-180B-chat format (``System: ..\\nUser: ..\\nFalcon: ..``), also used for
  Falcon-7B/40B-instruct.
- ``chatml``: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` ... ``<|im_start|>assistant\\n``.
- ``rinna``: rinna japanese-gpt-neox instruction models: ``ユーザー: ..<NL>システム: ..``; the
  tokenizer knows no newline, so every newline becomes ``<NL>``. ``rinna-bilingual`` is the same
  with real newlines (bilingual-gpt-neox-4b-instruction models).
- ``none``: no chat format (base models): the message contents joined by blank lines.
- ``tokenizer`` (the default): the tokenizer's own ``chat_template``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["TEMPLATES", "TemplateError", "render_prompt", "template_stop_sequences", "validate_messages"]

TEMPLATES = ("tokenizer", "llama2", "mistral", "falcon", "chatml", "rinna", "rinna-bilingual", "none")
ROLES = ("system", "user", "assistant")

_STOP_SEQUENCES: dict[str, list[str]] = {
    "llama2": ["</s>"],
    "mistral": ["</s>"],
    "falcon": ["\nUser:", "<|endoftext|>"],
    "chatml": ["<|im_end|>"],
    "rinna": ["</s>", "<NL>ユーザー:"],
    "rinna-bilingual": ["</s>", "\nユーザー:"],
    "none": [],
}


class TemplateError(ValueError):
    """The messages cannot be rendered with this template; the message says why."""


def _check_template(template: str) -> None:
    if template not in TEMPLATES:
        raise TemplateError(f"unknown prompt template {template!r}; choose one of {', '.join(TEMPLATES)}")


def validate_messages(
    messages: Sequence[Mapping[str, Any]], *, strict: bool = True, add_generation_prompt: bool = True
) -> list[dict[str, str]]:
    """Check the chat shape; returns plain ``{"role", "content"}`` dicts.

    Always: a non-empty list of objects with a ``role`` and a string ``content``. With ``strict``
    (every built-in template): roles are system/user/assistant, at most one system message and
    only first, then user and assistant alternate starting with user, and when a generation
    prompt is added the last message is the user's.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise TemplateError("messages must be a non-empty list of {'role': ..., 'content': ...} objects")
    plain: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TemplateError(f"messages[{i}] must be an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise TemplateError(f"messages[{i}] has no 'role'")
        if not isinstance(content, str):
            raise TemplateError(f"messages[{i}].content must be a string")
        if strict and role not in ROLES:
            raise TemplateError(f"messages[{i}].role {role!r} is not one of {', '.join(ROLES)}")
        plain.append({"role": role, "content": content})
    if not strict:
        return plain
    turns = plain[1:] if plain[0]["role"] == "system" else plain
    if not turns:
        raise TemplateError("messages need at least one user message after the system message")
    for i, message in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            index = i + (len(plain) - len(turns))
            if message["role"] == "system":
                raise TemplateError(f"messages[{index}]: a system message is only allowed first")
            raise TemplateError(
                f"messages[{index}] is {message['role']!r} but {expected!r} was expected: after an "
                "optional system message, roles must alternate user/assistant/user/..."
            )
    if add_generation_prompt and turns[-1]["role"] != "user":
        raise TemplateError("the last message must be the user's when asking the model to answer")
    return plain


def _split_system(messages: list[dict[str, str]]) -> tuple[str | None, list[dict[str, str]]]:
    if messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return None, messages


def _pairs(turns: list[dict[str, str]]) -> list[tuple[str, str | None]]:
    """(user, assistant-or-None) pairs from an alternating list."""
    return [
        (turns[i]["content"], turns[i + 1]["content"] if i + 1 < len(turns) else None) for i in range(0, len(turns), 2)
    ]


def _llama2(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    system, turns = _split_system(messages)
    out = []
    for n, (user, answer) in enumerate(_pairs(turns)):
        if n == 0 and system is not None:
            user = f"<<SYS>>\n{system}\n<</SYS>>\n\n{user}"
        out.append(f"<s>[INST] {user.strip()} [/INST]")
        if answer is not None:
            out.append(f" {answer.strip()} </s>")
    return "".join(out)


def _mistral(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    system, turns = _split_system(messages)
    out = ["<s>"]
    for n, (user, answer) in enumerate(_pairs(turns)):
        if n == 0 and system:
            user = f"{system}\n\n{user}"
        out.append(f"[INST] {user} [/INST]")
        if answer is not None:
            out.append(f"{answer}</s>")
    return "".join(out)


def _falcon(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    labels = {"system": "System", "user": "User", "assistant": "Falcon"}
    lines = [f"{labels[m['role']]}: {m['content']}" for m in messages]
    if add_generation_prompt:
        lines.append("Falcon:")
    return "\n".join(lines)


def _chatml(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def _rinna(messages: list[dict[str, str]], add_generation_prompt: bool, newline: str) -> str:
    system, turns = _split_system(messages)
    speakers = {"user": "ユーザー", "assistant": "システム"}
    utterances = []
    for n, message in enumerate(turns):
        content = message["content"]
        if n == 0 and system:  # the format has no system role: it leads the first request
            content = f"{system}\n{content}"
        utterances.append(f"{speakers[message['role']]}: {content.replace(chr(10), newline)}")
    if add_generation_prompt:
        utterances.append("システム: ")
    return newline.join(utterances)


def _plain(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    return "\n\n".join(m["content"] for m in messages)


def _tokenizer(messages: list[dict[str, str]], tokenizer: Any, add_generation_prompt: bool) -> str:
    if tokenizer is None:
        raise TemplateError("the 'tokenizer' template needs the model's tokenizer")
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise TemplateError(
            f"the tokenizer of {name!r} has no chat template; choose a prompt template "
            f"({', '.join(t for t in TEMPLATES if t != 'tokenizer')}) or send a plain prompt"
        )
    from jinja2 import TemplateError as JinjaTemplateError

    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except JinjaTemplateError as exc:  # the template's own raise_exception(), e.g. bad alternation
        raise TemplateError(f"the tokenizer's chat template rejected the messages: {exc}") from None
    if not isinstance(text, str):
        raise TemplateError(f"the tokenizer's chat template returned {type(text).__name__}, not text")
    return text


def render_prompt(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    tokenizer: Any = None,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text for ``messages`` in ``template`` (one of TEMPLATES).

    ``add_generation_prompt`` ends the prompt where the assistant's answer begins. For the
    ``tokenizer`` template the checks are the tokenizer template's own.
    """
    _check_template(template)
    if template == "tokenizer":
        plain = validate_messages(messages, strict=False)
        return _tokenizer(plain, tokenizer, add_generation_prompt)
    plain = validate_messages(messages, add_generation_prompt=add_generation_prompt)
    if template == "llama2":
        return _llama2(plain, add_generation_prompt)
    if template == "mistral":
        return _mistral(plain, add_generation_prompt)
    if template == "falcon":
        return _falcon(plain, add_generation_prompt)
    if template == "chatml":
        return _chatml(plain, add_generation_prompt)
    if template == "rinna":
        return _rinna(plain, add_generation_prompt, "<NL>")
    if template == "rinna-bilingual":
        return _rinna(plain, add_generation_prompt, "\n")
    return _plain(plain, add_generation_prompt)


def template_stop_sequences(template: str, tokenizer: Any = None) -> list[str]:
    """Stop strings that end an answer in ``template`` (e.g. llama2 -> ["</s>"]).

    For ``tokenizer`` this is the tokenizer's EOS token when one is given, else nothing.
    """
    _check_template(template)
    if template == "tokenizer":
        eos = getattr(tokenizer, "eos_token", None) if tokenizer is not None else None
        return [eos] if isinstance(eos, str) and eos else []
    return list(_STOP_SEQUENCES[template])
