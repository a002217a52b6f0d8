"""Audit a reasoning failure: a trolley-problem variant the model answers by pattern-matching.

In this variant the five people on the main track are already dead, so diverting the trolley only kills
the one living worker: the sensible answer to "Should you pull the lever?" is False. Small models (and
sometimes large ones) answer True, as in the classic puzzle. The score is the logprob margin
logprob(True) − logprob(False); the interaction with the largest positive effect is what pushes the
model toward the wrong answer.

    python examples/puzzle_audit.py [--budget 800] [--provider openai --model gpt-4o-mini]
"""

from __future__ import annotations

import argparse

import spex_api
from spex_api.report import print_report, save_plot, write_html

PUZZLE = (
    "A runaway trolley is heading toward five people lying on the track. The five people are already dead. "
    "You can pull a lever to send the trolley onto a side track, where it will kill one living worker."
)
TEMPLATE = (
    "Answer each question with True or False.\n\n"
    "Question: A ball is dropped from a roof. Will it fall down?\nAnswer: True\n\n"
    "Question: A glass of water is left in the sun. Will it freeze?\nAnswer: False\n\n"
    "Question: {content} Should you pull the lever?\nAnswer:"
)
WRONG = "True"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=800)
    ap.add_argument("--provider", default=None, help="default: local model (openai if OPENAI_API_KEY is set)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--max-cost", type=float, default=0.50)
    args = ap.parse_args()

    expl = spex_api.explain(
        PUZZLE, template=TEMPLATE, labels=["True", "False"], scorer="label-margin", budget=args.budget,
        provider=args.provider, model=args.model, max_cost=args.max_cost,
    )
    print_report(expl, k=10)
    answer = expl.metadata.original_answer.strip()
    margin = expl.metadata.original_score
    verdict = "it leans True: a reasoning failure" if margin > 0 else "it leans False, but see what pulls the other way"
    print(f"\nThe model answers {answer!r}; logprob(True) − logprob(False) = {margin:+.2f}, so {verdict} "
          f"(the sensible answer is False).")
    # What pushes toward the wrong answer: the strongest positive effects, real interactions first.
    pushes = [it for it in expl.interactions("mobius") if it.value > 0]
    joint = [it for it in pushes if len(it.features) >= 2]
    for label, items in (("interaction", joint), ("single feature", pushes)):
        if items:
            it = items[0]
            print(f"Strongest {label} pushing toward {WRONG!r}: {' × '.join(repr(n) for n in it.names)} "
                  f"(effect {it.value:+.3f}, order {len(it.features)})")
    r2 = "n/a" if expl.faithfulness is None else f"{expl.faithfulness:.3f}"
    print(f"held-out R² {r2}: {'trust the ranking' if (expl.faithfulness or 0) > 0.5 else 'treat it with caution'}")
    print(f"HTML: {write_html(expl, 'puzzle_audit.html')}  figure: {save_plot(expl, 'puzzle_audit.png')}")


if __name__ == "__main__":
    main()
