"""The ``streamhost`` command: one entry point, subcommands implemented where their code lives.

``container`` and ``serve`` run servers (their modules add their own arguments); the client
subcommands (deploy, invoke, chat, endpoints, models, catalog, bench) live in ``cli/<verb>.py`` and talk
to a running platform through the SDK.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, function that adds its arguments, function that runs it)
SUBCOMMANDS = {
    "container": ("streamhost.server.main", "add_arguments", "run", "serve one model (TGI / LMI / OpenAI APIs)"),
    "serve": ("streamhost.platform.main", "add_arguments", "run", "run the platform (SageMaker-compatible API)"),
}

# client subcommands: module -> the function that adds its parser(s) to the subparsers
CLIENT_COMMANDS = (
    ("streamhost.cli.deploy", "add_parser"),
    ("streamhost.cli.invoke", "add_parser"),
    ("streamhost.cli.chat", "add_parser"),
    ("streamhost.cli.resources", "add_parsers"),
    ("streamhost.cli.catalog", "add_parser"),
    ("streamhost.cli.bench", "add_parser"),
    ("streamhost.cli.train", "add_parser"),
    ("streamhost.cli.evaluate", "add_parser"),
    ("streamhost.cli.sdk_env", "add_parser"),
)


def build_parser() -> argparse.ArgumentParser:
    from streamhost.cli.common import add_url_option

    parser = argparse.ArgumentParser(prog="streamhost", description="Self-hosted streaming LLM endpoints.")
    add_url_option(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, add_args, _run, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            getattr(importlib.import_module(module), add_args)(p)
        except ImportError:
            p.set_defaults(_unavailable=module)
    for module, add in CLIENT_COMMANDS:
        getattr(importlib.import_module(module), add)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_unavailable", None):
        print(f"streamhost: error: '{args.command}' is not available in this build", file=sys.stderr)
        return 2
    handler = getattr(args, "_handler", None)
    if handler is not None:  # client subcommands report their own errors
        return int(handler(args))
    module, _add, run_name, _help = SUBCOMMANDS[args.command]
    try:
        return int(getattr(importlib.import_module(module), run_name)(args) or 0)
    except KeyboardInterrupt:
        return 130
