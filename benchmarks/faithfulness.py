"""Faithfulness against queries on a real model: our auto / SPEX / ProxySPEX and a linear LASSO baseline,
beside shapiq's SPEX and ProxySPEX, on the same cached value function and the same held-out masks.

Five prompts (words as features, n = 30-120) are answered by the local Gemma-3-270M through llama-server;
the score is the label margin logprob(True) − logprob(False). Every method asks the SAME value function,
memoised in memory and on disk (benchmarks/out/cache), so a mask asked by two methods is paid once and a
rerun of the benchmark is free. Faithfulness = R² on held-out uniform random masks the model answered.

    python benchmarks/faithfulness.py [--budgets 150 300 600] [--holdout 200] [--prompts 5] [--base-url URL]

Prints one row per (prompt, method, budget), a table of mean R² per method and budget, whether auto
reaches the R² of shapiq's best method with at most a quarter of its queries (or by how much it falls
short), and saves benchmarks/out/faithfulness.png.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

import numpy as np

# Run as a script, this folder comes first on sys.path, where benchmarks/providers.py would shadow the
# `providers` package: look modules up from the repository root instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from spex_api.engine.explainer import Explainer
from spex_api.engine.fourier import SparseFourier, r2_score
from spex_api.engine.indices import SparseMobius, mobius_to_fourier
from spex_api.engine.baseline import LinearBaseline
from spex_api.engine.planner import minimum_budget
from spex_api.engine.proxyspex import ProxySPEX
from spex_api.sdk import BackgroundLoop
from spex_api.engine.spex import SPEX
from spex_api.engine.oracle import Oracle

OUT = _HERE / "out"

FEW_SHOT = (
    "Answer each question about the text with True or False.\n\n"
    "Text: The shop opens at nine and closes at five.\nQuestion: Is the shop open at noon?\nAnswer: True\n\n"
    "Text: The bridge was closed for repairs all week.\nQuestion: Could cars cross the bridge that week?\nAnswer: False\n\n"
    "Text: {content}\nQuestion: %s\nAnswer:"
)
PROMPTS: list[tuple[str, str, str]] = [
    ("review", "Is the review positive?",
     "The pasta was excellent and the dessert was unforgettable, but the waiter forgot our order twice, the room "
     "was so noisy that we could barely talk, and the bill was much higher than we expected."),
    ("trolley", "Should you pull the lever?",
     "A runaway trolley is heading toward five people lying on the main track. The five people are already dead. "
     "You can pull a lever to send the trolley onto a side track, where it will kill one living worker who "
     "cannot escape."),
    ("ticket", "Is the ticket about billing?",
     "Hi, I upgraded to the yearly plan last week. Since then the app logs me out every morning, and today I "
     "noticed two identical charges on my card statement. Can someone please fix this before the weekend?"),
    ("claim", "Is the statement supported by the text?",
     "Statement: the museum is free on Sundays. The city museum charges twelve dollars for adults, but children "
     "under ten enter for free, and on the first Sunday of every month all visitors enter without paying."),
    ("email", "Is the email spam?",
     "Dear customer, your account has been selected for an exclusive reward. Click the link below within "
     "twenty four hours to confirm your details and claim the prize, or your access to online banking will "
     "be suspended."),
]


class SharedValueFunction:
    """The one value function every method asks: memoised per mask (in memory, and on disk by the runner)."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], n: int) -> None:
        self.fn, self.n = fn, n
        self.memo: dict[bytes, float] = {}
        self.model_queries = 0

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, dtype=bool).reshape(-1, self.n)
        keys = [row.tobytes() for row in np.packbits(masks, axis=1)]
        new = {k: i for i, k in enumerate(keys) if k not in self.memo}
        if new:
            scores = self.fn(masks[list(new.values())])
            self.memo.update(zip(new, map(float, scores)))
            self.model_queries += len(new)
        return np.array([self.memo[k] for k in keys])


class Counted:
    """A method's view of the shared value function: counts the distinct masks THIS method asked."""

    def __init__(self, shared: SharedValueFunction) -> None:
        self.shared = shared
        self.seen: set[bytes] = set()
        self.masks: list[np.ndarray] = []

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, dtype=bool).reshape(-1, self.shared.n)
        for row, key in zip(masks, (r.tobytes() for r in np.packbits(masks, axis=1))):
            if key not in self.seen:
                self.seen.add(key)
                self.masks.append(row)
        return self.shared(masks)

    @property
    def queries(self) -> int:
        return len(self.seen)


def _shapiq_fourier(cls_name: str, n: int, budget: int, game: Counted) -> SparseFourier:
    """Run shapiq's approximator and read the full Möbius transform it recovers (before index conversion)."""
    import shapiq

    approx = getattr(shapiq, cls_name)(n=n, index="FBII", max_order=2, random_state=0)
    captured: dict[tuple, float] = {}
    original = approx._process_moebius

    def capture(moebius_transform: dict[tuple, float]) -> Any:
        captured.update(moebius_transform)
        return original(moebius_transform=moebius_transform)

    approx._process_moebius = capture
    approx.approximate(budget, lambda X: game(np.asarray(X, dtype=bool)))
    keys = [tuple(int(i) for i in k) for k in captured]
    return mobius_to_fourier(SparseMobius(n, keys, np.array(list(captured.values()), dtype=float)))


def run_methods(shared: SharedValueFunction, n: int, budget: int, test: np.ndarray, y_test: np.ndarray) -> list[dict]:
    """Every method at one budget; returns rows with queries, held-out R² and CPU seconds."""
    rows = []

    def record(name: str, fn: Callable[[Counted], Any]) -> Any:
        game = Counted(shared)
        t = time.process_time()
        try:
            model = fn(game)
            r2 = r2_score(y_test, model.predict(test))
            note = ""
        except Exception as exc:  # a method that cannot run at this budget is reported, not fatal
            model, r2, note = None, float("nan"), f"{type(exc).__name__}: {exc}"[:80]
        rows.append({"method": name, "budget": budget, "queries": game.queries, "r2": r2,
                     "cpu": time.process_time() - t, "note": note})
        return model, game

    record("auto", lambda g: Explainer(g, n, budget, method="auto", random_state=0).explain())
    if budget >= minimum_budget(n, "spex", holdout=0):
        record("spex", lambda g: SPEX(n, b=SPEX.largest_b(n, budget), random_state=0).fit(Oracle(g, n, budget)))
    else:
        rows.append({"method": "spex", "budget": budget, "queries": 0, "r2": float("nan"), "cpu": 0.0,
                     "note": f"budget below SPEX minimum {minimum_budget(n, 'spex', holdout=0)}"})
    _, proxy_game = record("proxyspex", lambda g: ProxySPEX(n, n_samples=budget, random_state=0).fit(Oracle(g, n, budget)))
    # LASSO on exactly the masks ProxySPEX was given: the same answers, no extra queries.
    train = np.array(proxy_game.masks)
    record("lasso", lambda g: LinearBaseline(n, random_state=0).fit(train, g(train)))
    for name in ("SPEX", "ProxySPEX"):
        record(f"shapiq-{name}", lambda g, name=name: _shapiq_fourier(name, n, budget, g))
    return rows


def verdict(mean: dict[tuple[str, int], float], budgets: list[int]) -> str:
    """Does auto at budget B match shapiq's best at 4·B (or more)? Else by how much it falls short."""
    lines = []
    for big in budgets:
        shq = {m: mean.get((m, big), float("nan")) for m in ("shapiq-SPEX", "shapiq-ProxySPEX")}
        best_name = max(shq, key=lambda m: -np.inf if np.isnan(shq[m]) else shq[m])
        best = shq[best_name]
        if np.isnan(best):
            continue
        small = [b for b in budgets if 4 * b <= big]
        if not small:
            continue
        b = max(small)
        auto = mean.get(("auto", b), float("nan"))
        ok = auto >= best
        lines.append(
            f"shapiq best at {big} queries: {best_name} R² {best:.3f}; auto at {b} queries (≤ 1/4): R² {auto:.3f} → "
            + ("REACHED" if ok else f"falls short by {best - auto:.3f} R²")
        )
        reach = [bb for bb in budgets if mean.get(("auto", bb), -np.inf) >= best]
        if reach:
            lines.append(f"  auto first reaches it at {min(reach)} queries ({min(reach) / big:.2f} of shapiq's)")
        else:
            lines.append("  auto does not reach it at any budget tried")
    return "\n".join(lines) or "no budget pair B, 4·B available: pass --budgets with a 4x spread"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=int, nargs="+", default=[150, 300, 600])
    ap.add_argument("--holdout", type=int, default=200, help="held-out random masks per prompt")
    ap.add_argument("--prompts", type=int, default=5)
    ap.add_argument("--base-url", default=None, help="reuse a running local server (spex-api serve-local)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    budgets = sorted(args.budgets)
    OUT.mkdir(parents=True, exist_ok=True)

    from providers.runner import Runner
    from providers.value_function import LLMValueFunction
    from spex_api import sdk

    all_rows: list[dict] = []
    with ExitStack() as stack:
        base_url = args.base_url
        if base_url is None:
            from providers.local import LocalServer

            base_url = stack.enter_context(LocalServer()).base_url
        io = BackgroundLoop()
        stack.callback(io.close)
        runner = None
        for name, question, text in PROMPTS[: args.prompts]:
            pre = sdk.preview(text, base_url=base_url, template=FEW_SHOT % question, labels=["True", "False"],
                              scorer="label-margin", budget=max(budgets), cache_dir=None)
            adapter = sdk._make_adapter(pre.provider, pre.model, base_url, None)
            runner = Runner(adapter, cache=str(OUT / "cache"), concurrency=8)
            vf = LLMValueFunction(pre.prompt, adapter, pre.scorer, runner, progress=False)
            n = pre.prompt.n_features
            shared = SharedValueFunction(lambda m, vf=vf: io.run(vf(m)), n)
            test = np.random.default_rng([7, n]).random((args.holdout, n)) < 0.5
            t = time.time()
            y_test = shared(test)
            print(f"\n[{name}] n={n} words, held-out {len(test)} masks (score std {y_test.std():.3f})", flush=True)
            for budget in budgets:
                for row in run_methods(shared, n, budget, test, y_test):
                    row.update(prompt=name, n=n)
                    all_rows.append(row)
                    print(f"  {row['method']:>17} budget {budget:5d}: queries {row['queries']:5d}  R² {row['r2']:7.3f}  "
                          f"cpu {row['cpu']:6.1f}s {row['note']}", flush=True)
            print(f"  model queries for this prompt: {shared.model_queries} "
                  f"(API calls {runner.stats.api_calls}, cache hits {runner.stats.cache_hits}), wall {time.time() - t:.0f}s")
            summarize(all_rows, budgets, args.prompts)


METHODS = ["auto", "spex", "proxyspex", "lasso", "shapiq-SPEX", "shapiq-ProxySPEX"]


def summarize(all_rows: list[dict], budgets: list[int], n_prompts: int) -> None:
    """Mean R² / queries / CPU per method and budget over the prompts done so far, the verdict, the plot."""
    done = sorted({r["prompt"] for r in all_rows}, key=[p[0] for p in PROMPTS].index)
    mean: dict[tuple[str, int], float] = {}
    queries: dict[tuple[str, int], float] = {}
    cpu: dict[tuple[str, int], float] = {}
    for m in METHODS:
        for b in budgets:
            sel = [r for r in all_rows if r["method"] == m and r["budget"] == b]
            vals = [r["r2"] for r in sel if not np.isnan(r["r2"])]
            mean[(m, b)] = float(np.mean(vals)) if len(vals) == len(sel) and sel else float("nan")
            queries[(m, b)] = float(np.mean([r["queries"] for r in sel])) if sel else float("nan")
            cpu[(m, b)] = float(np.mean([r["cpu"] for r in sel])) if sel else float("nan")
    print(f"\nMean held-out R² over {len(done)} of {n_prompts} prompts ({', '.join(done)}); mean queries used, mean CPU s:")
    print(f"{'method':>17} | " + " | ".join(f"budget {b:>5}          " for b in budgets))
    for m in METHODS:
        cells = [f"{mean[(m, b)]:6.3f} ({queries[(m, b)]:5.0f}q {cpu[(m, b)]:5.1f}s)" for b in budgets]
        print(f"{m:>17} | " + " | ".join(cells))
    print("\n" + verdict(mean, budgets), flush=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in METHODS:
        xs = [queries[(m, b)] for b in budgets if not np.isnan(mean[(m, b)])]
        ys = [mean[(m, b)] for b in budgets if not np.isnan(mean[(m, b)])]
        if xs:
            ax.plot(xs, ys, marker="o", label=m, linestyle="--" if m.startswith("shapiq") else "-")
    ax.set_xscale("log")
    ax.set_xlabel("queries to the model")
    ax.set_ylabel("held-out R² (mean over prompts)")
    ax.set_title(f"Faithfulness vs queries · Gemma-3-270M · {len(done)} prompts, words as features", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = OUT / "faithfulness.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
