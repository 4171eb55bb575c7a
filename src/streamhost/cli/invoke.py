"""``streamhost invoke ENDPOINT [PROMPT]``: one request, streamed live with ``--stream``.

Generation parameters come as flags (--max-new-tokens, --temperature, ...) or as a JSON object
(--params); flags win over the JSON. Without ``--chat`` the body is TGI's ``{"inputs",
"parameters"}`` and the prompt is raw text, which the model continues. With ``--chat`` the prompt
is a question put in the model's chat format (the catalog's template or the tokenizer's, as
``streamhost chat`` does), with the catalog's recommended parameters under the flags.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from streamhost.cli.common import CliError, add_json_option, add_url_option, print_json, run, session_from
from streamhost.client.sdk import EulaNotAcceptedError, Predictor, generated_text

# flag attribute -> TGI parameter name
PARAMETER_FLAGS = {
    "max_new_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
    "stop": "stop",
}


def add_generation_options(p: argparse.ArgumentParser) -> None:
    """The sampling flags shared by ``invoke`` and ``chat``."""
    g = p.add_argument_group("generation parameters")
    g.add_argument("--max-new-tokens", type=int, metavar="N", help="tokens to generate at most")
    g.add_argument("--temperature", type=float, metavar="T", help="sampling temperature (> 0)")
    g.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling, strictly between 0 and 1")
    g.add_argument("--top-k", type=int, metavar="K", help="sample among the K likeliest tokens")
    g.add_argument("--seed", type=int, help="random seed, for repeatable sampling")
    g.add_argument("--stop", action="append", metavar="TEXT", help="stop sequence (repeatable)")
    g.add_argument("--params", metavar="JSON", help="parameters as a JSON object, e.g. '{\"max_new_tokens\": 64}'")
    p.add_argument("--accept-eula", action="store_true", help="send accept_eula=true (models whose licence needs it)")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "invoke",
        help="send one prompt to an endpoint (--stream prints tokens as they arrive)",
        description="Send PROMPT (or standard input) to ENDPOINT and print the answer.",
    )
    p.add_argument("endpoint", metavar="ENDPOINT")
    p.add_argument("prompt", nargs="?", metavar="PROMPT", help="the prompt; '-' or absent reads standard input")
    p.add_argument("--stream", action="store_true", help="stream the answer token by token")
    p.add_argument(
        "--chat",
        action="store_true",
        help="ask PROMPT as a question in the model's chat format (without it, PROMPT is raw text to continue)",
    )
    p.add_argument("--system", metavar="TEXT", help="with --chat: a system prompt before the question")
    p.add_argument("--full-text", action="store_true", help="print the prompt before the answer (return_full_text)")
    add_generation_options(p)
    add_json_option(p)
    add_url_option(p)
    p.set_defaults(_handler=lambda args: run(invoke, args))


def build_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The ``parameters`` object: --params JSON, then the individual flags on top."""
    parameters: dict[str, Any] = {}
    if getattr(args, "params", None):
        try:
            parsed = json.loads(args.params)
        except json.JSONDecodeError as exc:
            raise CliError(f"--params is not valid JSON: {exc.msg} at column {exc.colno}") from None
        if not isinstance(parsed, dict):
            raise CliError(f"--params must be a JSON object, got {type(parsed).__name__}")
        parameters.update(parsed)
    for attribute, name in PARAMETER_FLAGS.items():
        value = getattr(args, attribute, None)
        if value is not None:
            parameters[name] = value
    return parameters


def invoke_body(prompt: str, parameters: dict[str, Any], full_text: bool = False) -> dict[str, Any]:
    """TGI's generate body. The answer alone, streamed or not, unless ``full_text`` (TGI's
    ``/invocations`` repeats the prompt in non-streamed answers by default)."""
    parameters = dict(parameters)
    if full_text:
        parameters["return_full_text"] = True
    parameters.setdefault("return_full_text", False)
    return {"inputs": prompt, "parameters": parameters}


def read_prompt(prompt: str | None, stdin: TextIO) -> str:
    """The prompt argument, or all of standard input when it is '-' or absent (and not a terminal)."""
    if prompt is not None and prompt != "-":
        text = prompt
    elif stdin.isatty():
        raise CliError("give a PROMPT argument or pipe the prompt on standard input")
    else:
        text = stdin.read()
    if not text.strip():
        raise CliError("the prompt is empty")
    return text


def invoke(args: argparse.Namespace) -> int:
    prompt = read_prompt(args.prompt, sys.stdin)
    predictor = Predictor(args.endpoint, session=session_from(args), accept_eula=args.accept_eula)
    if args.chat:
        if args.full_text:
            raise CliError("--full-text repeats a raw prompt; it does not apply to --chat")
        try:
            body = predictor.chat_body(prompt, system=args.system, stream=args.stream, **build_parameters(args))
        except EulaNotAcceptedError:
            raise CliError(
                f"the model behind {args.endpoint!r} requires accepting its licence: add --accept-eula"
            ) from None
    else:
        if args.system:
            raise CliError("--system needs --chat (a raw prompt has no roles)")
        body = invoke_body(prompt, build_parameters(args), full_text=args.full_text)
    if args.stream:
        if args.json:  # one event per line, as the server sent them
            for event in predictor.stream_events(body):
                sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
                sys.stdout.flush()
            return 0
        wrote_newline = True
        for text in predictor.stream(body):
            sys.stdout.write(text)
            sys.stdout.flush()
            wrote_newline = text.endswith("\n")
        if not wrote_newline:
            sys.stdout.write("\n")
        return 0
    response = predictor.predict(body)
    if args.json:
        print_json(response)
        return 0
    answer = generated_text(response)
    sys.stdout.write((answer if answer is not None else json.dumps(response, ensure_ascii=False)) + "\n")
    return 0
