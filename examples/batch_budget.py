"""A budget-capped batch from a script: explain every prompt of a CSV under ONE dollar cap, resumably.

All prompts share one runner: one rate limiter, one disk cache and one `max_cost` across the batch.
Finished explanations are saved to --out-dir and skipped on the next run; a prompt cut short (Ctrl-C,
kill, or the dollar cap) is resumed from the disk cache, paying only for the answers still missing.
Prints a summary table.

    python examples/batch_budget.py [--csv examples/data/reviews.csv] [--max-cost 1.00] [--budget 300]
                                    [--provider openai --model gpt-4o-mini]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from rich.console import Console
from rich.table import Table

import spex_api
from spex_api.engine.explanation import Explanation

HERE = Path(__file__).resolve().parent
TEMPLATE = (
    "Decide whether each review is positive. Answer True or False.\n\n"
    "Review: Great food and friendly staff.\nPositive: True\n\n"
    "Review: The soup was cold and the waiter was rude.\nPositive: False\n\n"
    "Review: {content}\nPositive:"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=HERE / "data" / "reviews.csv", help="columns: id,text")
    ap.add_argument("--out-dir", type=Path, default=Path("batch_out"))
    ap.add_argument("--max-cost", type=float, default=1.00, help="dollars, across the whole batch")
    ap.add_argument("--budget", type=int, default=300, help="queries per prompt")
    ap.add_argument("--provider", default=None, help="default: local model (openai if OPENAI_API_KEY is set)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--cache-dir", default="~/.cache/spex-api")
    args = ap.parse_args()

    with args.csv.open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh)]
    if not rows or not {"id", "text"} <= set(rows[0]):
        raise SystemExit(f"{args.csv} needs the columns id,text")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    saved = {r["id"]: args.out_dir / f"{r['id']}.json" for r in rows}
    todo = [r for r in rows if not saved[r["id"]].exists()]
    print(f"{len(rows) - len(todo)} of {len(rows)} prompts already done; explaining {len(todo)} "
          f"under a shared cap of ${args.max_cost:.2f}")

    results = spex_api.explain_many(
        [r["text"] for r in todo], template=TEMPLATE, labels=["True", "False"], budget=args.budget,
        max_cost=args.max_cost, provider=args.provider, model=args.model, cache_dir=args.cache_dir,
        confirm=False, return_exceptions=True,
    )
    status = {}
    for row, res in zip(todo, results):
        if isinstance(res, Exception):
            status[row["id"]] = f"not done: {res}"
        else:
            res.save(saved[row["id"]])
            status[row["id"]] = "done now"

    table = Table(title=f"batch summary ({args.csv.name})", title_justify="left")
    for col in ("id", "answer", "method", "queries", "cost", "R²", "strongest interaction", "status"):
        table.add_column(col, overflow="fold")
    total = 0.0
    for row in rows:
        path = saved[row["id"]]
        if not path.exists():
            table.add_row(row["id"], "", "", "", "", "", "", status.get(row["id"], "not done"))
            continue
        expl = Explanation.load(path)
        total += expl.cost or 0.0
        inter = [it for it in expl.interactions("mobius") if len(it.features) >= 2][:1]
        top = f"{inter[0].value:+.2f} {' × '.join(inter[0].names)}" if inter else "none (interactions did not pay)"
        r2 = "n/a" if expl.faithfulness is None else f"{expl.faithfulness:.2f}"
        table.add_row(row["id"], (expl.metadata.original_answer or "").strip(), expl.method, str(expl.queries_used),
                      f"${expl.cost or 0:.4f}", r2, top, status.get(row["id"], "done earlier"))
    Console(width=max(Console().width, 130)).print(table)
    print(f"spent on the saved explanations: ${total:.4f} (cache hits are free); rerun to resume anything not done")


if __name__ == "__main__":
    main()
