"""``streamhost catalog list [--filter EXPR]`` and ``streamhost catalog show ID``: the ready-to-deploy models."""

from __future__ import annotations

import argparse
from typing import Any

from streamhost.cli.common import add_json_option, console, print_json, print_table, run
from streamhost.client.sdk import open_catalog


def add_parser(sub: Any) -> None:
    catalog = sub.add_parser("catalog", help="browse the model catalog")
    csub = catalog.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = csub.add_parser(
        "list",
        help="list catalog models",
        description="List catalog models. Filters compare fields: 'task == llm and eula_required == false', "
        "'framework == huggingface or licence == apache-2.0', 'not source == hub'.",
    )
    p.add_argument("--filter", metavar="EXPR", help="filter expression, e.g. 'task == llm and eula_required == false'")
    p.add_argument("--state-dir", help="platform state directory, for its catalog extension (default ~/.streamhost)")
    add_json_option(p)
    p.set_defaults(_handler=lambda args: run(list_catalog, args))

    p = csub.add_parser("show", help="show one catalog model: hub id, licence, environment, template")
    p.add_argument("model_id", metavar="ID", help="catalog id (or hub id)")
    p.add_argument("--state-dir", help="platform state directory, for its catalog extension (default ~/.streamhost)")
    add_json_option(p)
    p.set_defaults(_handler=lambda args: run(show_catalog, args))


def list_catalog(args: argparse.Namespace) -> int:
    models = open_catalog(args.state_dir).list(args.filter)
    if args.json:
        print_json([m.to_dict() for m in models])
        return 0
    rows = [
        (
            m.id + (" (default)" if m.default else ""),
            m.hub_id,
            m.task,
            m.licence,
            "[yellow]yes[/yellow]" if m.eula_required else "no",
            m.prompt_template,
        )
        for m in models
    ]
    print_table("Catalog", ["Id", "Hub id", "Task", "Licence", "EULA", "Template"], rows, empty="no matching models")
    return 0


def show_catalog(args: argparse.Namespace) -> int:
    model = open_catalog(args.state_dir).get(args.model_id)
    if args.json:
        print_json(model.to_dict())
        return 0
    out = console()
    out.print(f"[bold]{model.id}[/bold]  {model.name}")
    for label, value in (
        ("Hub id", model.hub_id),
        ("Task", model.task),
        ("Framework", model.framework),
        ("Source", model.source),
        ("Licence", model.licence),
        ("EULA", f"required: {model.eula_url}" if model.eula_required else "not required"),
        ("Template", model.prompt_template),
        ("Resources", model.min_resources),
    ):
        if value:
            out.print(f"  {label + ':':<11}{value}", markup=False)
    if model.description:
        out.print(f"  {model.description}", markup=False)
    if model.default_env:
        print_table("Default environment", ["Key", "Value"], sorted(model.default_env.items()))
    if model.recommended_parameters:
        print_table("Recommended parameters", ["Name", "Value"], sorted(model.recommended_parameters.items()))
    eula = " --accept-eula" if model.eula_required else ""
    out.print(f"Deploy: streamhost deploy {model.id}{eula}", markup=False)
    return 0
