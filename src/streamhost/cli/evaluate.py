"""``streamhost evaluate --base EP --tuned EP --data test.jsonl``: side-by-side answers with ROUGE-L."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from streamhost.cli.common import (
    CliError,
    add_url_option,
    console,
    print_table,
    run,
    session_from,
)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="compare a base and a tuned endpoint on held-out examples (ROUGE-L, side-by-side table)",
        description="Stream both endpoints' answers for each example of --data (JSON lines with instruction/context/"
        "response, or prompt/reference) and write a side-by-side table with ROUGE-L per row and overall, as "
        "Markdown and JSON.",
    )
    p.add_argument("--base", required=True, metavar="ENDPOINT", help="endpoint serving the base model")
    p.add_argument("--tuned", required=True, metavar="ENDPOINT", help="endpoint serving the tuned model")
    p.add_argument("--data", required=True, type=Path, metavar="FILE", help="held-out examples (.jsonl)")
    p.add_argument(
        "--template", type=Path, metavar="FILE", help="template.json the job trained with (default: Dolly-style)"
    )
    p.add_argument("--out", type=Path, default=Path("evaluation"), metavar="PREFIX",
                   help="writes PREFIX.md and PREFIX.json (default ./evaluation)")  # fmt: skip
    p.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="answer length limit (default 128)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N examples")
    p.add_argument("--accept-eula", action="store_true", help="send accept_eula=true (gated models)")
    add_url_option(p)
    p.set_defaults(_handler=lambda args: run(evaluate, args))


def evaluate(args: argparse.Namespace) -> int:
    from streamhost.client.sdk import Predictor
    from streamhost.training.data import load_template
    from streamhost.training.evaluate import (
        load_eval_examples,
        run_comparison,
        to_markdown,
    )

    if not args.data.is_file():
        raise CliError(f"--data {args.data}: no such file")
    template = None
    if args.template is not None:
        if not args.template.is_file():
            raise CliError(f"--template {args.template}: no such file")
        template = load_template(args.template)
    examples = load_eval_examples(args.data, template)
    if args.limit:
        examples = examples[: args.limit]
    session = session_from(args)
    parameters = {"max_new_tokens": args.max_new_tokens, "do_sample": False}

    def answerer(endpoint: str):
        predictor = Predictor(endpoint, session=session, accept_eula=args.accept_eula)

        def answer(prompt: str) -> str:
            return "".join(predictor.stream({"inputs": prompt, "parameters": parameters}))

        return answer

    err = console(stderr=True)

    def progress(index: int, row) -> None:
        err.print(f"[{index + 1}/{len(examples)}] ROUGE-L base {row.rouge_l_base:.3f} tuned {row.rouge_l_tuned:.3f}")

    report = run_comparison(examples, answerer(args.base), answerer(args.tuned), args.base, args.tuned, progress)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    markdown = args.out.with_suffix(".md")
    markdown.write_text(to_markdown(report), encoding="utf-8")
    args.out.with_suffix(".json").write_text(
        json.dumps(report.to_dict(), indent=1, ensure_ascii=False), encoding="utf-8"
    )
    print_table(None, ["#", "reference", args.base, args.tuned, "R-L base", "R-L tuned"],
                ([i + 1, r.reference[:60], r.base[:60], r.tuned[:60], f"{r.rouge_l_base:.3f}", f"{r.rouge_l_tuned:.3f}"]
                 for i, r in enumerate(report.rows)))  # fmt: skip
    print(f"ROUGE-L over {len(report.rows)} examples: base {report.rouge_l_base:.3f}, tuned {report.rouge_l_tuned:.3f}")
    print(f"wrote {markdown} and {args.out.with_suffix('.json')}", file=sys.stderr)
    return 0
