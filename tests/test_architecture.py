"""The engine stays a leaf: it imports no providers, SDK, UI or network code, and has no import cycle."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import spex_api.engine

FORBIDDEN = ("providers", "spex_api.sdk", "spex_api.cli", "spex_api.report", "rich", "typer", "jinja2",
             "matplotlib", "openai", "anthropic", "httpx", "httpx2")
ENGINE_DIR = Path(spex_api.engine.__file__).parent
MODULES = sorted(m.name for m in pkgutil.iter_modules([str(ENGINE_DIR)]))


def _imports(path: Path) -> list[tuple[str, bool]]:
    """Every module a file imports, anywhere in it, with whether the import is at module top level."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, id(node) in top))
    return found


def _forbidden(name: str) -> bool:
    return any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN)


def test_engine_source_imports_nothing_forbidden():
    bad = [(m, name) for m in MODULES for name, _ in _imports(ENGINE_DIR / f"{m}.py") if _forbidden(name)]
    assert bad == []
    assert "importlib" not in {name for m in MODULES for name, _ in _imports(ENGINE_DIR / f"{m}.py")}


def test_engine_has_no_import_cycle():
    graph = {m: {name.rsplit(".", 1)[-1] for name, _ in _imports(ENGINE_DIR / f"{m}.py")
                 if name.startswith("spex_api.engine.")} for m in MODULES}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for dep in graph[m]:
            assert state.get(dep) != 1, f"import cycle: {' -> '.join(path + [m, dep])}"
            if dep not in state:
                visit(dep, path + [m])
        state[m] = 2

    for m in MODULES:
        if m not in state:
            visit(m, [])


# scikit-learn >= 1.9 itself imports rich (sklearn.callback), so at run time rich is only checked in our source.
LOADED_FORBIDDEN = tuple(m for m in FORBIDDEN if m != "rich")


def test_importing_every_engine_module_loads_nothing_forbidden():
    code = ("import sys\n"
            + "".join(f"import spex_api.engine.{m}\n" for m in MODULES)
            + f"bad = [m for m in sys.modules if any(m == b or m.startswith(b + '.') for b in {LOADED_FORBIDDEN!r})]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_every_estimator_keeps_the_contract_and_queries_used_means_what_it_sent():
    import numpy as np

    from spex_api.engine.estimator import AnswerEstimator, Estimator
    from spex_api.engine.exhaustive import Exhaustive
    from spex_api.engine.oracle import Oracle
    from spex_api.engine.proxyspex import ProxySPEX
    from spex_api.engine.spex import SPEX

    def f(masks):
        return masks[:, 0] * 2.0 - masks[:, 1] * masks[:, 2]

    n = 6
    estimators = [SPEX(n, b=2, max_order=2, random_state=0), ProxySPEX(n, n_samples=40, random_state=0),
                  Exhaustive(n)]
    assert all(isinstance(e, Estimator) for e in estimators)
    assert isinstance(estimators[1], AnswerEstimator) and not isinstance(estimators[2], AnswerEstimator)
    for estimator in estimators:
        oracle = Oracle(f, n)
        first = estimator.fit(oracle)
        assert first.queries_used == oracle.queries_used > 0
        again = estimator.fit(oracle)  # every answer is held: nothing is sent, nothing is counted
        assert again.queries_used == 0 and oracle.queries_used == first.queries_used
    masks = np.random.default_rng(0).random((40, n)) < 0.5
    assert estimators[1].fit_answers(masks, f(masks)).queries_used == 0
