"""Run one shapiq estimator in another interpreter and print its figures as JSON (one line on stdout).

shapiq >= 1.5 needs Python >= 3.12 while the project runs on 3.11, so the newest shapiq lives in its own venv;
`call` runs this file there. Only numpy, scipy and shapiq are needed in it (the planted function and R² come
from this repository via PYTHONPATH). Two jobs:

- benchmarks/engine.py: shapiq's SPEX or ProxySPEX on a planted function, its figures;
- benchmarks/faithfulness.py (`"answers"`: an .npz of masks and scores already paid for): shapiq's ProxySPEX
  fitted on exactly those answers, or its SPEX on its own design's answers (the masks it lacks come back to be
  asked), its Fourier coefficients (the parent measures R² on its held-out answers).

    <venv>/bin/python benchmarks/_shapiq_child.py '{"kind": "proxyspex", "n": 256, "budget": 1000, ...}'
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import warnings
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._planted import planted_hierarchical, random_masks  # noqa: E402
from spex_api.engine.fourier import SparseFourier, r2_score  # noqa: E402


# The venv with shapiq 1.8 that benchmarks/engine.py's docstring builds (SHAPIQ18_PYTHON names another).
DEFAULT_PYTHON = os.environ.get("SHAPIQ18_PYTHON", os.path.expanduser("~/.cache/spex-api/shapiq-1.8/bin/python"))
# Prefix of the one result line: shapiq's proxy models may print to stdout too (LightGBM's C++ logger).
RESULT_TAG = "shapiq-child-result: "


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def capture_fourier(approx: Any, kind: str, captured: dict[str, Any]) -> None:
    """Record shapiq's Fourier transform in captured["fourier"] where it is handed to the Möbius step: ProxySPEX's
    method in shapiq >= 1.5, else the sparse base module's function (SPEX, and ProxySPEX in shapiq 1.4)."""
    if kind == "proxyspex" and hasattr(approx, "fourier_to_moebius"):
        method = approx.fourier_to_moebius

        def capture_method(transform: dict) -> dict:
            captured["fourier"] = dict(transform)
            return method(transform)

        approx.fourier_to_moebius = capture_method
    else:
        import shapiq.approximator.sparse.base as base

        to_moebius = base.fourier_to_moebius

        def capture(transform: dict) -> dict:
            captured["fourier"] = dict(transform)
            return to_moebius(transform)

        base.fourier_to_moebius = capture


def run(kind: str, n: int, budget: int, noise: float, n_top: int, seed: int, holdout_seed: int) -> dict[str, Any]:
    """shapiq's SPEX or ProxySPEX; its Fourier transform is captured where it is handed to the Möbius step."""
    warnings.filterwarnings("ignore")
    base_mb = _rss_mb()  # before importing shapiq, as for the in-process peer
    import shapiq

    f = planted_hierarchical(n, n_top=n_top, noise=noise, seed=seed)
    seen: list[np.ndarray] = []

    def game(masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks).astype(bool)
        seen.append(np.packbits(masks, axis=1))
        return f(masks)

    captured: dict[str, Any] = {}
    approx = (shapiq.SPEX if kind == "spex" else shapiq.ProxySPEX)(n=n, index="FBII", max_order=5, random_state=0)
    capture_fourier(approx, kind, captured)
    np.random.seed(0)  # SPEX's design comes from numpy's global RNG (random_state does not reach it)
    cpu = time.process_time()
    approx.approximate(budget, game)
    cpu = time.process_time() - cpu
    fourier = SparseFourier.from_dict(n, captured["fourier"])
    X = random_masks(n, 1000, holdout_seed)
    return {"r2": r2_score(f.clean(X), fourier.predict(X)), "r2_noisy": r2_score(f(X), fourier.predict(X)),
            "queries": len(np.unique(np.vstack(seen), axis=0)),
            "cpu": cpu, "peak_mb": _rss_mb(), "base_mb": base_mb, "terms": len(fourier),
            "version": getattr(shapiq, "__version__", "?")}


class PoolSampler:
    """Stands in for shapiq's coalition sampler: hands its ProxySPEX the masks that were already answered (also
    used by benchmarks/faithfulness.py for shapiq 1.4 in its own process)."""

    def __init__(self, masks: np.ndarray) -> None:
        self.masks = masks
        self.coalitions_matrix: np.ndarray | None = None

    def sample(self, budget: int) -> None:
        self.coalitions_matrix = self.masks[:budget].copy()


class _Design(Exception):
    """Raised once shapiq's SPEX has built its signal (asked its whole design) when some answers are missing."""


def run_answers(kind: str, n: int, budget: int, answers: str, max_order: int, seed: int) -> dict[str, Any]:
    """shapiq's ProxySPEX or SPEX fitted on the answers in `answers` (.npz: masks, y): its Fourier coefficients
    (keys as index lists) and CPU seconds. It asks nothing. ProxySPEX is handed the file's masks as its sample;
    SPEX asks its own (non-adaptive) design: when the file lacks some of it, the design's masks come back as
    {"missing": rows of np.packbits as hex} for the caller to answer, and it is run again."""
    warnings.filterwarnings("ignore")
    import shapiq

    data = np.load(answers)
    masks, y = data["masks"].astype(bool), np.asarray(data["y"], dtype=float)
    known = {row.tobytes(): float(v) for row, v in zip(np.packbits(masks, axis=1), y)}
    captured: dict[str, Any] = {}
    missing: dict[bytes, None] = {}

    def game(coalitions: np.ndarray) -> np.ndarray:
        rows = np.packbits(np.asarray(coalitions, dtype=bool), axis=1)
        missing.update((r.tobytes(), None) for r in rows if r.tobytes() not in known)
        return np.array([known.get(r.tobytes(), 0.0) for r in rows])  # a missing one is never decoded

    if kind == "proxyspex":
        approx = shapiq.ProxySPEX(n=n, index="FBII", max_order=max_order, random_state=seed)
        approx._sampler = PoolSampler(masks)
    else:
        import shapiq.approximator.sparse.base as base

        approx = shapiq.SPEX(n=n, index="FBII", max_order=max_order, random_state=seed)
        transform = base.sparse_fourier_transform

        def decode(signal: Any, **kwargs: Any) -> Any:
            if missing:
                raise _Design
            return transform(signal, **kwargs)

        base.sparse_fourier_transform = decode
    capture_fourier(approx, kind, captured)
    np.random.seed(seed)  # SPEX's design comes from numpy's global RNG (random_state does not reach it)
    cpu = time.process_time()
    try:
        approx.approximate(budget, game)
    except _Design:
        return {"missing": [row.hex() for row in missing]}
    cpu = time.process_time() - cpu
    fourier = captured["fourier"]
    return {"keys": [list(map(int, k)) for k in fourier], "values": [float(v) for v in fourier.values()],
            "cpu": cpu, "version": getattr(shapiq, "__version__", "?")}


def call(python: str, args: dict[str, Any], cpu_limit: float) -> dict[str, Any]:
    """Run this file under `python` on `args`, capped at `cpu_limit` CPU seconds: its result, or {"timeout": ...}
    / {"error": ...}."""
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    try:
        proc = subprocess.run([python, os.path.abspath(__file__), json.dumps({**args, "cpu_limit": cpu_limit})],
                              capture_output=True, text=True, env=env, timeout=10 * cpu_limit + 120)
    except subprocess.TimeoutExpired:
        return {"timeout": cpu_limit}
    lines = [line[len(RESULT_TAG):] for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if not lines:  # stopped by SIGXCPU, or died before answering
        if proc.returncode < 0:
            return {"timeout": cpu_limit}
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:80]}
    return dict(json.loads(lines[-1]))


def main() -> None:
    args = json.loads(sys.argv[1])
    limit = int(np.ceil(args.pop("cpu_limit")))
    resource.setrlimit(resource.RLIMIT_CPU, (limit, limit + 5))
    try:
        out = run_answers(**args["answers"]) if "answers" in args else run(**args)
    except Exception as exc:  # reported in the table, not swallowed
        out = {"error": f"{type(exc).__name__}: {exc}"[:80]}
    print(RESULT_TAG + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
