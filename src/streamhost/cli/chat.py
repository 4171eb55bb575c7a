"""``streamhost chat ENDPOINT``: a multi-turn conversation in the terminal, streamed token by token.

How the conversation becomes a prompt depends on the model. When the endpoint's model is a catalog
entry with its own prompt template (Llama 2, Falcon, Mistral, rinna), the prompt is rendered here
with that template and sent as a generate request. Otherwise the history is sent as OpenAI-style
``{"messages": [...]}``, which the model server routes to chat completions and formats with the
tokenizer's own chat template; its streamed chunks are read by the same TokenIterator.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from streamhost.catalog.templates import TEMPLATES
from streamhost.cli.common import CliError, add_url_option, console, format_error, run, session_from
from streamhost.cli.invoke import add_generation_options, build_parameters
from streamhost.client.chat import MESSAGES_MODE, ChatPlan, endpoint_environment, plan_for
from streamhost.client.iterators import StreamError
from streamhost.client.sdk import Predictor, open_catalog

__all__ = ["MESSAGES_MODE", "ChatPlan", "add_parser", "chat", "plan_chat"]

HELP = "commands: /reset (forget the conversation), /exit (leave); Ctrl-D also leaves"


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "chat",
        help="multi-turn streaming chat with an endpoint in the terminal",
        description=f"Chat with ENDPOINT; answers stream as they are generated. {HELP}.",
    )
    p.add_argument("endpoint", metavar="ENDPOINT")
    p.add_argument("--system", metavar="TEXT", help="a system prompt leading the conversation")
    p.add_argument(
        "--template",
        default="auto",
        choices=["auto", MESSAGES_MODE, *[t for t in TEMPLATES if t != "tokenizer"]],
        help="how to build the prompt: auto (the catalog's template, else the server's chat template), "
        "messages (server-side chat template) or a named template",
    )
    p.add_argument("--state-dir", help="platform state directory, for its catalog extension (default ~/.streamhost)")
    add_generation_options(p)
    add_url_option(p)
    p.set_defaults(_handler=lambda args: run(chat, args))


def plan_chat(args: argparse.Namespace, environment: dict[str, str]) -> ChatPlan:
    """Pick the prompt format and default parameters from the catalog entry of the served model."""
    catalog = open_catalog(getattr(args, "state_dir", None)) if environment.get("HF_MODEL_ID") else None
    return plan_for(environment, catalog, getattr(args, "template", "auto"), build_parameters(args))


def _read_line(stdin: TextIO, prompt: str) -> str | None:
    """One line of user input (None at end of input); a terminal gets line editing and a prompt."""
    if stdin.isatty():
        try:
            return input(prompt)
        except EOFError:
            return None
    line = stdin.readline()
    return None if line == "" else line.rstrip("\n")


def chat(args: argparse.Namespace) -> int:
    session = session_from(args)
    plan = plan_chat(args, endpoint_environment(session.sagemaker, args.endpoint))
    if plan.eula_required and not args.accept_eula:
        raise CliError(f"the model behind {args.endpoint!r} requires accepting its licence: add --accept-eula")
    predictor = Predictor(args.endpoint, session=session, accept_eula=args.accept_eula)
    err = console(stderr=True)
    interactive = sys.stdin.isatty()
    if interactive:
        mode = "server chat template" if plan.template == MESSAGES_MODE else f"{plan.template} template"
        err.print(f"[dim]Chatting with {args.endpoint} ({mode}); {HELP}[/dim]")
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict[str, str]] = list(system)
    while True:
        line = _read_line(sys.stdin, "you> ")
        if line is None:
            if interactive:
                sys.stdout.write("\n")
            return 0
        command = line.strip()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            return 0
        if command == "/reset":
            history = list(system)
            err.print("[dim]conversation reset[/dim]")
            continue
        if command in ("/help", "/?"):
            err.print(f"[dim]{HELP}[/dim]")
            continue
        history.append({"role": "user", "content": line})
        answer = _answer(predictor, plan, history)
        if answer is None:
            history.pop()  # the turn failed; the user may retry it
        else:
            history.append({"role": "assistant", "content": answer})


def _answer(predictor: Predictor, plan: ChatPlan, history: list[dict[str, str]]) -> str | None:
    """Stream one answer to stdout; None (after an error line on stderr) when it failed."""
    from botocore.exceptions import ClientError

    pieces: list[str] = []
    if sys.stdin.isatty():
        sys.stdout.write("assistant> ")
    try:
        for text in predictor.stream(plan.body(history)):
            pieces.append(text)
            sys.stdout.write(text)
            sys.stdout.flush()
    except (ClientError, StreamError) as exc:
        sys.stdout.write("\n" if pieces else "")
        sys.stdout.flush()
        sys.stderr.write(format_error(exc, predictor.session.endpoint_url) + "\n")
        return None
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(pieces).strip()
