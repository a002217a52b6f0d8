"""Engine benchmark: our SPEX / ProxySPEX / auto next to shapiq's SPEX / ProxySPEX, same functions, same budgets.

    python benchmarks/engine.py            # full table (~15 min on 2 cores)
    python benchmarks/engine.py --quick    # smaller table (< 3 min)
    python benchmarks/engine.py --target   # only issue #10's target cases: n=256, 1,000 queries, clean and noisy
    python benchmarks/engine.py --crossover  # the SPEX-vs-ProxySPEX sweep behind the planner's auto rule
    python benchmarks/engine.py --quick --dump DIR  # also write each of our explanations to DIR as JSON

`--dump` writes, per case and our method, the recovered Fourier coefficients (keys and exact float values)
and the queries spent, as canonical JSON: two trees' outputs compare byte for byte (`cmp -r`), which is how
a refactor is shown to leave the numerics unchanged.

shapiq columns: 1.4 (or whatever shapiq the project's Python has) in a forked child, and shapiq 1.8, which
needs Python >= 3.12, through another interpreter in a subprocess (benchmarks/_shapiq_child.py). Build it once:

    /root/.pyenv/versions/3.12.1/bin/python -m venv ~/.cache/spex-api/shapiq-1.8
    ~/.cache/spex-api/shapiq-1.8/bin/pip install "shapiq[sparse]==1.8.0" lightgbm

(--shapiq18-python or $SHAPIQ18_PYTHON point elsewhere); without it those rows say so and are skipped.

Every run happens in a forked child process with a CPU-time limit (so a slow peer is stopped after
--peer-timeout CPU seconds whatever the load on the shared cores, and each run's peak memory is its
own). Figures: R² against the noiseless planted function on 1,000
held-out uniform random masks, distinct queries sent, CPU seconds (time.process_time in the child),
peak RSS of the child (MB; includes ~the interpreter and imports, printed as "base"). Noisy cases also
give R² against the noisy held-out answers as a share of the noise ceiling 1/(1 + noise²) (the best any
fit can reach on them; the share equals the R² against the noiseless function). Our SPEX and
ProxySPEX get the whole budget, as the peers do; "auto" is the full Explainer (5% of the budget held
out, linear baseline comparison), i.e. what a user gets.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _shapiq_child as shapiq_child  # noqa: E402
from benchmarks._planted import PlantedFunction, planted_hierarchical, random_masks  # noqa: E402
from spex_api.engine.fourier import SparseFourier, r2_score  # noqa: E402

HOLDOUT_SEED = 987_654
DUMP_DIR: str | None = None  # set by --dump; forked children inherit it


@dataclass(frozen=True)
class Case:
    n: int
    budget: int
    noise: float
    n_top: int
    seed: int

    def function(self) -> PlantedFunction:
        return planted_hierarchical(self.n, n_top=self.n_top, noise=self.noise, seed=self.seed)

    @property
    def label(self) -> str:
        return f"n={self.n} B={self.budget} {self.n_top} tops " + (f"noise {self.noise:g}" if self.noise else "clean")


class Counting:
    """Wraps a planted function for a peer: counts the distinct masks it is asked."""

    def __init__(self, f: PlantedFunction) -> None:
        self.f = f
        self.seen: list[np.ndarray] = []

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks).astype(bool)
        self.seen.append(np.packbits(masks, axis=1))
        return self.f(masks)

    @property
    def distinct(self) -> int:
        return len(np.unique(np.vstack(self.seen), axis=0)) if self.seen else 0


# ------------------------------------------------------------------------------------------- methods
def ours_spex(f: PlantedFunction, budget: int) -> tuple[SparseFourier, int]:
    from spex_api.engine.spex import SPEX

    b = SPEX.largest_b(f.n, budget)
    expl = SPEX(f.n, b=b, random_state=0).fit(f)
    return expl.fourier, f.queries


def ours_proxyspex(f: PlantedFunction, budget: int) -> tuple[SparseFourier, int]:
    from spex_api.engine.proxyspex import ProxySPEX

    expl = ProxySPEX(f.n, n_samples=budget, random_state=0).fit(f)
    return expl.fourier, f.queries


def ours_auto(f: PlantedFunction, budget: int) -> tuple[SparseFourier, int]:
    from spex_api.engine.explainer import Explainer

    expl = Explainer(f, f.n, budget, random_state=0).explain()
    return expl.fourier, expl.queries_used


def _shapiq(kind: str, f: PlantedFunction, budget: int) -> tuple[SparseFourier, int]:
    """shapiq's estimator; its Fourier transform is captured where it hands it to the Möbius step."""
    warnings.filterwarnings("ignore")
    import shapiq

    captured: dict[str, Any] = {}
    game = Counting(f)
    cls = shapiq.SPEX if kind == "spex" else shapiq.ProxySPEX
    approx = cls(n=f.n, index="FBII", max_order=5, random_state=0)
    shapiq_child.capture_fourier(approx, kind, captured)
    np.random.seed(0)  # shapiq SPEX's design comes from numpy's global RNG (random_state does not reach it)
    approx.approximate(budget, game)
    return SparseFourier.from_dict(f.n, captured["fourier"]), game.distinct


def shapiq_spex(f: PlantedFunction, budget: int) -> tuple[SparseFourier, int]:
    return _shapiq("spex", f, budget)


def shapiq_proxyspex(f: PlantedFunction, budget: int) -> tuple[SparseFourier, int]:
    return _shapiq("proxyspex", f, budget)


METHODS: dict[str, Callable[[PlantedFunction, int], tuple[SparseFourier, int]]] = {
    "ours SPEX": ours_spex,
    "ours ProxySPEX": ours_proxyspex,
    "ours auto": ours_auto,
    "shapiq SPEX": shapiq_spex,
    "shapiq ProxySPEX": shapiq_proxyspex,
}
# shapiq 1.8 runs in another interpreter (Python >= 3.12): method name → estimator kind.
SHAPIQ18 = {"shapiq1.8 SPEX": "spex", "shapiq1.8 ProxySPEX": "proxyspex"}


# ------------------------------------------------------------------------------------- child runner
def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _limit_cpu(seconds: float) -> None:
    """The kernel stops this process (SIGXCPU) after `seconds` of CPU: a cap immune to other users' load."""
    soft = int(np.ceil(seconds))
    resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 5))


def _child(conn, method: str, case: Case, cpu_limit: float) -> None:
    _limit_cpu(cpu_limit)
    try:
        f = case.function()
        base = _rss_mb()
        cpu = time.process_time()
        fourier, queries = METHODS[method](f, case.budget)
        cpu = time.process_time() - cpu
        if DUMP_DIR is not None and method.startswith("ours"):
            _dump(case, method, fourier, queries)
        X = random_masks(case.n, 1000, HOLDOUT_SEED)
        r2 = r2_score(f.clean(X), fourier.predict(X))
        conn.send({"r2": r2, "r2_noisy": r2_score(f(X), fourier.predict(X)), "queries": queries, "cpu": cpu,
                   "peak_mb": _rss_mb(), "base_mb": base, "terms": len(fourier), "true_terms": len(f.fourier)})
    except Exception as exc:  # reported in the table, not swallowed
        conn.send({"error": f"{type(exc).__name__}: {exc}"[:80]})
    finally:
        conn.close()


def _dump(case: Case, method: str, fourier: SparseFourier, queries: int) -> None:
    """One explanation as canonical JSON (repr-exact floats, sorted keys) in DUMP_DIR."""
    name = f"{case.label} {method}".replace(" ", "_").replace("=", "") + ".json"
    data = {"case": case.label, "method": method, "queries": int(queries),
            "keys": [list(map(int, k)) for k in fourier.keys], "values": [float(v) for v in fourier.values]}
    with open(os.path.join(DUMP_DIR, name), "w", encoding="utf-8") as fh:
        json.dump(data, fh, sort_keys=True)


def _in_child(target: Callable[..., None], args: tuple, cpu_limit: float) -> dict[str, Any]:
    """Run target(conn, *args, cpu_limit) in a forked child; {"timeout": cpu_limit} if it hit the CPU cap."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(child, *args, cpu_limit))
    proc.start()
    child.close()
    # Wall-clock backstop only (the CPU limit normally ends the child): generous for a loaded machine.
    if parent.poll(10 * cpu_limit + 60):
        try:
            result = parent.recv()
        except EOFError:  # killed by SIGXCPU before answering
            result = {"timeout": cpu_limit}
    else:
        proc.kill()
        result = {"timeout": cpu_limit}
    proc.join()
    parent.close()
    return result


def run_shapiq18(kind: str, case: Case, cpu_limit: float, python: str | None) -> dict[str, Any]:
    """shapiq 1.8 in its own interpreter (a subprocess capped at `cpu_limit` CPU seconds), or a skip note."""
    if not python or not os.path.exists(python):
        return {"skipped": f"skipped: no Python 3.12 venv with shapiq 1.8 at {python} (see this script's docstring)"}
    args = {"kind": kind, "n": case.n, "budget": case.budget, "noise": case.noise, "n_top": case.n_top,
            "seed": case.seed, "holdout_seed": HOLDOUT_SEED}
    return shapiq_child.call(python, args, cpu_limit)


def run(method: str, case: Case, cpu_limit: float, shapiq18_python: str | None = None) -> dict[str, Any]:
    """Run one method on one case in a forked child (shapiq 1.8: a subprocess), stopped after `cpu_limit` CPU s."""
    if method in SHAPIQ18:
        return run_shapiq18(SHAPIQ18[method], case, cpu_limit, shapiq18_python)
    return _in_child(_child, (method, case), cpu_limit)


def _cell(res: dict[str, Any] | None, noise: float) -> str:
    if res is None:
        return "skipped"
    if "timeout" in res:
        return f"stopped (>{res['timeout']:.0f} s CPU)"
    if "skipped" in res:
        return res["skipped"]
    if "error" in res:
        return "error: " + res["error"]
    share = f"  {res['r2_noisy'] * (1 + noise ** 2):.3f} of ceiling" if noise and "r2_noisy" in res else ""
    return (f"R² {res['r2']:6.3f}  q {res['queries']:6d}  cpu {res['cpu']:7.2f}s  "
            f"mem {res['peak_mb']:6.0f}MB (base {res['base_mb']:.0f}){share}")


def main_table(cases: list[Case], peer_timeout: float, our_timeout: float,
               shapiq18_python: str | None) -> list[tuple[Case, dict[str, dict[str, Any] | None]]]:
    """One row per (case, method) and ratio rows against each peer; returns every result."""
    print(f"{'case':34s} {'method':19s} result")
    peer_gave_up: dict[str, tuple[int, int]] = {}
    table = []
    for case in cases:
        results: dict[str, dict[str, Any] | None] = {}
        for method in [*METHODS, *SHAPIQ18]:
            is_peer = method.startswith("shapiq")
            limit = peer_timeout if is_peer else our_timeout
            stop = peer_gave_up.get(method)
            if stop is not None and case.n >= stop[0] and case.budget >= stop[1]:
                results[method] = {"skipped": f"skipped (stopped >{peer_timeout:.0f} s CPU at n={stop[0]} B={stop[1]})"}
            else:
                results[method] = run(method, case, limit, shapiq18_python)
                if is_peer and "timeout" in results[method]:
                    peer_gave_up[method] = (case.n, case.budget)
            print(f"{case.label:34s} {method:19s} {_cell(results[method], case.noise)}", flush=True)
        for algo in ("SPEX", "ProxySPEX"):
            for peer_name in (f"shapiq {algo}", f"shapiq1.8 {algo}"):
                ours, peer = results[f"ours {algo}"], results[peer_name]
                label = f"vs {peer_name.split()[0]}"
                if ours and peer and "r2" in ours and "r2" in peer:
                    print(f"{'':34s} {label + ' ' + algo:19s} ΔR² {ours['r2'] - peer['r2']:+.3f}  "
                          f"CPU {peer['cpu'] / max(ours['cpu'], 1e-9):6.1f}x less  "
                          f"queries {ours['queries']}/{peer['queries']}")
                elif ours and "r2" in ours and peer and "timeout" in peer:
                    print(f"{'':34s} {label + ' ' + algo:19s} peer stopped at {peer['timeout']:.0f} s CPU: "
                          f">{peer['timeout'] / max(ours['cpu'], 1e-9):.0f}x less CPU")
        print(f"{'':34s} (true terms: {len(case.function().fourier)})", flush=True)
        table.append((case, results))
    return table


TARGET_CASES = [Case(256, 1000, 0.0, 20, 1), Case(256, 1000, 0.3, 20, 1)]


def target_summary(table: list[tuple[Case, dict[str, dict[str, Any] | None]]]) -> None:
    """Issue #10's planted targets: clean R² >= 0.98 in <= 5 s CPU; noisy >= 0.9 of the noise ceiling."""
    print("\nTargets (n=256, 1,000 queries, ~160 true terms): clean R² >= 0.98 in <= 5 s CPU; noisy (sd 0.3 x "
          "signal) >= 0.9 of the noise ceiling")
    for case, results in table:
        if case not in TARGET_CASES:
            continue
        for method in ("ours ProxySPEX", "ours auto", "shapiq ProxySPEX", "shapiq1.8 ProxySPEX"):
            res = results.get(method)
            if not res or "r2" not in res:
                print(f"  {case.label:34s} {method:19s} {_cell(res, case.noise)}")
                continue
            if case.noise:
                share = res["r2_noisy"] * (1 + case.noise**2)
                met = share >= 0.9
                fig = f"{share:.3f} of ceiling (R² {res['r2_noisy']:.3f} on noisy answers, ceiling {1 / (1 + case.noise ** 2):.3f})"
            else:
                met = res["r2"] >= 0.98 and res["cpu"] <= 5.0
                fig = f"R² {res['r2']:.3f} in {res['cpu']:.2f} s CPU"
            print(f"  {case.label:34s} {method:19s} {fig}  {'MET' if met else 'not met'}")


# ------------------------------------------------------------------------------- index conversion
def _random_fourier(n: int, n_coefs: int, max_degree: int, seed: int) -> SparseFourier:
    rng = np.random.default_rng(seed)
    keys = {()}
    while len(keys) < n_coefs:
        d = int(rng.integers(1, max_degree + 1))
        keys.add(tuple(sorted(rng.choice(n, size=d, replace=False).tolist())))
    keys = sorted(keys, key=len)
    return SparseFourier(n, keys, rng.normal(size=len(keys)))


def _conversion_child(conn, which: str, indices: tuple[str, ...], cpu_limit: float) -> None:
    _limit_cpu(cpu_limit)
    try:
        warnings.filterwarnings("ignore")
        from spex_api.engine.indices import fourier_to_mobius, interaction_index

        fourier = _random_fourier(1000, 2000, 5, seed=5)
        out = {}
        if which == "ours":
            for index in indices:
                cpu = time.process_time()
                values = interaction_index(fourier, index, 5 if index in ("k-sii", "fbii", "fsii", "stii") else None)
                out[index] = (time.process_time() - cpu, len(values))
        else:
            from shapiq import InteractionValues
            from shapiq.game_theory.moebius_converter import MoebiusConverter

            mob = fourier_to_mobius(fourier)
            iv = InteractionValues(values=np.asarray(mob.values), index="Moebius", min_order=0, max_order=5,
                                   n_players=1000, interaction_lookup={k: i for i, k in enumerate(mob.keys)},
                                   baseline_value=float(dict(zip(mob.keys, mob.values)).get((), 0.0)))
            for index in indices:
                cpu = time.process_time()
                values = MoebiusConverter(iv)(index=index, order=5)
                out[index] = (time.process_time() - cpu, len(values.values))
        conn.send(out)
    except Exception as exc:
        conn.send({"error": f"{type(exc).__name__}: {exc}"[:100]})
    finally:
        conn.close()


def conversion_table(peer_timeout: float) -> None:
    ours_idx = ("mobius", "shapley", "banzhaf", "sii", "bii", "k-sii", "fbii", "fsii", "stii")
    peer_idx = ("SII", "k-SII", "FSII", "STII", "FBII")
    print("\nIndex conversion: 2,000 Fourier coefficients, degree <= 5, n = 1000 (CPU seconds, order 5)")
    results = {which: _in_child(_conversion_child, (which, idx), peer_timeout if which == "shapiq" else 300)
               for which, idx in (("ours", ours_idx), ("shapiq", peer_idx))}
    ours = results["ours"]
    if "error" in ours:
        print("ours: " + ours["error"])
        return
    print("ours:   " + "  ".join(f"{k} {v[0]:.3f}s ({v[1]} terms)" for k, v in ours.items()))
    print(f"ours total over {len(ours)} indices: {sum(v[0] for v in ours.values()):.3f}s")
    peer = results["shapiq"]
    if "timeout" in peer:
        print(f"shapiq MoebiusConverter: stopped (>{peer_timeout:.0f} s CPU for {', '.join(peer_idx)})")
    elif "error" in peer:
        print("shapiq MoebiusConverter: " + peer["error"])
    else:
        print("shapiq: " + "  ".join(f"{k} {v[0]:.3f}s ({v[1]} terms)" for k, v in peer.items()))
        for ours_name, peer_name in (("sii", "SII"), ("k-sii", "k-SII"), ("fsii", "FSII"), ("stii", "STII"),
                                     ("fbii", "FBII")):
            if ours_name in ours and peer_name in peer:
                print(f"  ratio {peer_name}: {peer[peer_name][0] / max(ours[ours_name][0], 1e-9):.0f}x less CPU")


# ------------------------------------------------------------------------------------- crossover
def _crossover_child(conn, n: int, kind: str, b: int, cpu_limit: float) -> None:
    _limit_cpu(cpu_limit)
    from spex_api.engine.proxyspex import ProxySPEX
    from spex_api.engine.spex import SPEX

    f = {"hier noisy": lambda: planted_hierarchical(n, seed=1, noise=0.1),
         "hier40 noisy": lambda: planted_hierarchical(n, n_top=40, seed=2, noise=0.1)}[kind]()
    X = random_masks(n, 1000, HOLDOUT_SEED)
    N = SPEX.n_queries(n, b)
    out = {"N": N, "terms": len(f.fourier)}
    for name, make in (("spex", lambda: SPEX(n, b=b, random_state=0)),
                       ("proxy", lambda: ProxySPEX(n, n_samples=N, random_state=0))):
        cpu = time.process_time()
        fourier = make().fit(f).fourier
        out[name] = (r2_score(f.clean(X), fourier.predict(X)), time.process_time() - cpu)
    conn.send(out)
    conn.close()


def crossover(ns: tuple[int, ...], bs: range) -> None:
    """R² of SPEX at b vs ProxySPEX at the same number of queries (the planner's auto rule)."""
    print("SPEX vs ProxySPEX at equal queries (R² on 1,000 held-out masks vs the noiseless function)")
    for n in ns:
        for kind in ("hier noisy", "hier40 noisy"):
            for b in bs:
                res = _in_child(_crossover_child, (n, kind, b), 600)
                if "timeout" in res:
                    print(f"n={n:5d} {kind:13s} b={b}: stopped (>600 s CPU)")
                    continue
                print(f"n={n:5d} {kind:13s} ({res['terms']:3d} terms) b={b} N={res['N']:6d}  "
                      f"SPEX {res['spex'][0]:.3f} ({res['spex'][1]:.1f}s)  "
                      f"ProxySPEX {res['proxy'][0]:.3f} ({res['proxy'][1]:.1f}s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller table (< 3 min)")
    parser.add_argument("--crossover", action="store_true", help="SPEX vs ProxySPEX sweep over b")
    parser.add_argument("--target", action="store_true", help="only the issue #10 target cases (n=256, B=1000)")
    parser.add_argument("--shapiq18-python", default=shapiq_child.DEFAULT_PYTHON,
                        help="Python of a venv with shapiq 1.8 (default $SHAPIQ18_PYTHON or %(default)s)")
    parser.add_argument("--peer-timeout", type=float, default=None, help="CPU seconds allowed per shapiq run")
    parser.add_argument("--dump", metavar="DIR", default=None,
                        help="write each of our explanations (Fourier keys, values, queries) to DIR as JSON")
    args = parser.parse_args()
    if args.dump:
        global DUMP_DIR
        os.makedirs(args.dump, exist_ok=True)
        DUMP_DIR = args.dump
    if args.crossover:
        crossover((64, 256, 1000), range(3, 7))
        return
    if args.target:
        cases = list(TARGET_CASES)
        peer_timeout, our_timeout = args.peer_timeout or 120.0, 60.0
    elif args.quick:
        cases = [*TARGET_CASES, Case(64, 1000, 0.0, 10, 1), Case(256, 1000, 0.0, 10, 1), Case(256, 5000, 0.0, 10, 1),
                 Case(1000, 25000, 0.0, 20, 1)]
        peer_timeout, our_timeout = args.peer_timeout or 12.0, 20.0
    else:
        cases = [*TARGET_CASES, Case(64, 1000, 0.0, 10, 1), Case(64, 5000, 0.1, 10, 1), Case(256, 1000, 0.0, 10, 1),
                 Case(256, 5000, 0.0, 10, 1), Case(256, 5000, 0.1, 10, 1), Case(1000, 2500, 0.0, 20, 1),
                 Case(1000, 25000, 0.0, 20, 1), Case(1000, 25000, 0.1, 20, 1)]
        peer_timeout, our_timeout = args.peer_timeout or 60.0, 90.0
    wall0 = time.perf_counter()
    print(f"planted hierarchical functions (Möbius/AND tops of degree 2-4 + decaying subsets; noisy = "
          f"noise sd 0.1 or 0.3 x signal sd); CPU cap per run: peers {peer_timeout:.0f} s, ours {our_timeout:.0f} s\n")
    table = main_table(cases, peer_timeout, our_timeout, args.shapiq18_python)
    target_summary(table)
    if not args.target:
        conversion_table(peer_timeout)
    print(f"\nwall {time.perf_counter() - wall0:.0f} s")


if __name__ == "__main__":
    main()
