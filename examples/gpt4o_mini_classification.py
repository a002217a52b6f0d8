"""Explain a classification answer: why does the model call this support ticket a billing issue?

Runs as it stands. Without OPENAI_API_KEY it explains the local Gemma-3-270M model (started and stopped
for you). With a key it prints the exact command that runs the same analysis on gpt-4o-mini; add
--openai to run it here (it asks before spending and stays under --max-cost).

    python examples/gpt4o_mini_classification.py [--openai] [--budget 600] [--max-cost 0.25]
"""

from __future__ import annotations

import argparse
import os
import shlex

import spex_api
from spex_api.report import print_report, write_html

TICKET = (
    "Hi, I upgraded to the yearly plan last week. Since then the app logs me out every morning, "
    "and today I noticed two identical charges on my card statement. Can someone fix this?"
)
# Few-shot, completion-style: works on chat models and on the small local base model alike.
TEMPLATE = (
    "Classify each support ticket: is it about billing? Answer True or False.\n\n"
    "Ticket: I was charged twice for my subscription.\nBilling: True\n\n"
    "Ticket: The app crashes when I open the settings page.\nBilling: False\n\n"
    "Ticket: {content}\nBilling:"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--openai", action="store_true", help="run on gpt-4o-mini (needs OPENAI_API_KEY)")
    ap.add_argument("--budget", type=int, default=600)
    ap.add_argument("--max-cost", type=float, default=0.25)
    ap.add_argument("--out", default="classification_report.html")
    args = ap.parse_args()
    has_key = bool(os.environ.get("OPENAI_API_KEY"))

    if has_key and not args.openai:
        cli = [
            "spex-api", "explain", "--provider", "openai", "--model", "gpt-4o-mini", "--labels", "True,False",
            "--template", TEMPLATE, "--budget", str(args.budget), "--max-cost", str(args.max_cost),
            "--out", args.out, TICKET,
        ]
        print("OPENAI_API_KEY is set. To explain gpt-4o-mini's answer run:\n")
        print("  " + shlex.join(cli))
        print("\nor:  python examples/gpt4o_mini_classification.py --openai")
        return
    if args.openai and not has_key:
        raise SystemExit("--openai needs OPENAI_API_KEY")

    provider = dict(provider="openai", model="gpt-4o-mini", max_cost=args.max_cost) if args.openai else dict(provider="local")
    expl = spex_api.explain(TICKET, template=TEMPLATE, labels=["True", "False"], budget=args.budget, **provider)
    print_report(expl, k=8)
    print(f"HTML report: {write_html(expl, args.out)}")
    if not args.openai:
        print("(ran on the local Gemma-3-270M model; set OPENAI_API_KEY to get the gpt-4o-mini command)")


if __name__ == "__main__":
    main()
