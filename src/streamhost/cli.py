"""The ``streamhost`` command: one entry point, subcommands implemented where their code lives."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, function that adds its arguments, function that runs it)
SUBCOMMANDS = {
    "container": ("streamhost.server.main", "add_arguments", "run", "serve one model (TGI / LMI / OpenAI APIs)"),
    "serve": ("streamhost.platform.main", "add_arguments", "run", "run the platform (SageMaker-compatible API)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamhost", description="Self-hosted streaming LLM endpoints.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, add_args, _run, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            getattr(importlib.import_module(module), add_args)(p)
        except ImportError:
            p.set_defaults(_unavailable=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_unavailable", None):
        print(f"streamhost: error: '{args.command}' is not available in this build", file=sys.stderr)
        return 2
    module, _add, run_name, _help = SUBCOMMANDS[args.command]
    try:
        return int(getattr(importlib.import_module(module), run_name)(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
