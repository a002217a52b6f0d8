"""Adaptive vs uniform designs at equal budget: our AdaptiveProxySPEX (2 rounds) against our uniform ProxySPEX and
shapiq's ProxySPEX (the peer, in the same run), on seeded planted hierarchical functions.

    python benchmarks/adaptive.py            # every case, 5 seeds (~20 min on 2 free cores)
    python benchmarks/adaptive.py --quick    # 3 cases, 3 seeds

Each cell: R² against the noiseless function on 1,000 fresh uniform masks (for noisy cases this equals the
share of the noise ceiling), mean ± standard error over seeds (seed s = planted function s+1, random_state s),
and the paired difference adaptive − uniform with its standard error. All three methods get the same budget and
the same value function; the distinct queries each sent are checked against it. This table is the evidence
behind the planner keeping one uniform round under method="auto" (see ADAPTIVE_MIN_SAMPLES in
spex_api/engine/planner.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._planted import planted_hierarchical, random_masks  # noqa: E402
from benchmarks.engine import HOLDOUT_SEED, _shapiq  # noqa: E402
from spex_api.engine.adaptive import AdaptiveProxySPEX  # noqa: E402
from spex_api.engine.fourier import r2_score  # noqa: E402
from spex_api.engine.oracle import Oracle  # noqa: E402
from spex_api.engine.proxyspex import ProxySPEX  # noqa: E402

# (n, budget, noise sd as a share of the signal sd, planted tops)
CASES = [(32, 300, 0.3, 6), (64, 500, 0.3, 10), (64, 500, 0.0, 10), (128, 800, 0.3, 15), (256, 1000, 0.3, 20),
         (256, 1000, 0.0, 20), (256, 1500, 0.3, 20)]
QUICK = [(64, 500, 0.3, 10), (128, 800, 0.3, 15), (256, 1000, 0.3, 20)]


def one(n: int, budget: int, noise: float, tops: int, seed: int, peer: bool) -> dict[str, tuple[float, int, float]]:
    """R², distinct queries and CPU seconds of each method on one seeded case."""
    out = {}
    X = random_masks(n, 1000, HOLDOUT_SEED)
    for name in ("uniform", "adaptive", "shapiq") if peer else ("uniform", "adaptive"):
        f = planted_hierarchical(n, n_top=tops, noise=noise, seed=seed + 1)
        cpu = time.process_time()
        if name == "shapiq":
            fourier, queries = _shapiq("proxyspex", f, budget)
        else:
            oracle = Oracle(f, n, budget=budget)
            est = (ProxySPEX(n, n_samples=budget, random_state=seed) if name == "uniform"
                   else AdaptiveProxySPEX(n, n_samples=budget, random_state=seed))
            fourier, queries = est.fit(oracle).fourier, oracle.queries_used
        out[name] = (r2_score(f.clean(X), fourier.predict(X)), int(queries), time.process_time() - cpu)
        if queries > budget:
            raise AssertionError(f"{name} sent {queries} queries over the budget {budget}")
    return out


def _ms(values: list[float]) -> str:
    a = np.asarray(values)
    se = a.std(ddof=1) / np.sqrt(len(a)) if len(a) > 1 else float("nan")
    return f"{a.mean():.4f} ± {se:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 cases, 3 seeds")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per case (default 5, --quick 3)")
    parser.add_argument("--no-peer", action="store_true", help="skip shapiq's ProxySPEX")
    parser.add_argument("--cases", default=None, help="n:budget:noise:tops,... instead of the built-in list")
    args = parser.parse_args()
    cases, seeds = (QUICK, 3) if args.quick else (CASES, 5)
    if args.cases:
        cases = [(int(n), int(b), float(z), int(t)) for n, b, z, t in (c.split(":") for c in args.cases.split(","))]
    seeds = args.seeds or seeds
    print(f"load: {os.getloadavg()[0]:.1f} (1-min average at start); R² vs the noiseless function on 1,000 fresh "
          f"uniform masks, mean ± se over {seeds} seeds")
    print(f"{'case':30s} {'uniform ProxySPEX':18s} {'adaptive (2 rounds)':20s} {'adaptive − uniform':20s} "
          f"{'shapiq 1.4 ProxySPEX':21s} cpu s (uni/ada/peer)")
    for n, budget, noise, tops in cases:
        runs = [one(n, budget, noise, tops, s, not args.no_peer) for s in range(seeds)]
        col = {m: [r[m][0] for r in runs] for m in runs[0]}
        cpu = {m: np.mean([r[m][2] for r in runs]) for m in runs[0]}
        diff = [a - u for a, u in zip(col["adaptive"], col["uniform"])]
        wins = sum(d > 0 for d in diff)
        label = f"n={n} B={budget} {tops} tops " + (f"noise {noise:g}" if noise else "clean")
        peer = _ms(col["shapiq"]) if "shapiq" in col else "skipped"
        print(f"{label:30s} {_ms(col['uniform']):18s} {_ms(col['adaptive']):20s} {_ms(diff):>15s} "
              f"({wins}/{seeds}) {peer:21s} {cpu['uniform']:.1f}/{cpu['adaptive']:.1f}/{cpu.get('shapiq', 0):.1f}",
              flush=True)


if __name__ == "__main__":
    main()
