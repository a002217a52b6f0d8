"""Faithfulness on real prompts: our auto / SPEX / ProxySPEX and a linear LassoCV fit beside shapiq's SPEX and
ProxySPEX, on the same cached answers, with each prompt's measured repeat-noise ceiling.

Ten prompts are answered by the local Gemma-3-270M through llama-server (sentiment with negation and contrast,
multi-document QA whose answer needs two documents together, modified classic puzzles, and a long review of
n >= 200 words); the score is the label margin logprob(True) − logprob(False). Per prompt:

- held-out: `--holdout` fresh uniform random masks (default 200), never used for training; R² is measured on them;
- noise: the first `--repeats` held-out masks asked a second time (a genuine re-ask, in shuffled order, cached
  under its own key) give the repeat-noise sd and the R² ceiling 1 − noise²/var(score) (NoiseEstimate);
- training: ProxySPEX's uniform masks (all-kept, all-masked, then a seeded stream) are nested, so the masks of
  budget 500 are the first 500 of budget 1,500; linear LassoCV and shapiq's ProxySPEX are fitted on exactly those
  masks (shapiq's sampler is handed them), so the three see identical answers. SPEX designs are nested in b.
  auto asks what its plan asks (the same stream, plus its own held-out slice at larger budgets); shapiq's SPEX
  asks its own design (numpy's global RNG seeded, so a collected design is asked again). shapiq 1.8 (Python >= 3.12:
  run in that venv's interpreter, see benchmarks/engine.py; `--shapiq18-python`) fits its ProxySPEX on the same
  training answers, handed over in a file, and its SPEX on its own design's answers, asked through the store.
  Adaptive ProxySPEX (two rounds, method="adaptive") asks round 1 from the same stream (the pool's first half,
  already paid for) and round 2 from round 1's fit, so its row shows what the adaptive design adds over uniform
  ProxySPEX at the same budget on these prompts.

Every answer goes through the runner's disk cache and a score store under `--cache` (default
/work/notes/faith-cache, outside the repository), so a rerun with a changed engine asks nothing the cache
holds; missing answers are asked from a local server started on demand.

    python benchmarks/faithfulness.py --collect        # ask every answer the table needs (no table)
    python benchmarks/faithfulness.py                  # the table (from the cache; asks only what is missing)
    python benchmarks/faithfulness.py --offline --budgets 500 --prompts review-but not-bad

Prints per prompt and budget: R² of every method, the noise ceiling, auto as a share of the ceiling, auto − linear
with its standard error; then means and the #10 targets (auto ≥ linear + 0.05 at 500, auto ≥ 0.85 of the ceiling at
1,500, auto never below linear by more than one standard error).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

# Run as a script, this folder comes first on sys.path, where benchmarks/providers.py would shadow the
# `providers` package: look modules up from the repository root instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from benchmarks import _shapiq_child as shapiq_child  # noqa: E402
from spex_api.engine.adaptive import AdaptiveProxySPEX  # noqa: E402
from spex_api.engine.baseline import LinearBaseline  # noqa: E402
from spex_api.engine.explainer import Explainer  # noqa: E402
from spex_api.engine.explanation import NoiseEstimate  # noqa: E402
from spex_api.engine.fourier import SparseFourier, r2_score  # noqa: E402
from spex_api.engine.indices import SparseMobius, mobius_to_fourier  # noqa: E402
from spex_api.engine.oracle import Oracle  # noqa: E402
from spex_api.engine.proxyspex import ProxySPEX, uniform_masks  # noqa: E402
from spex_api.engine.spex import SPEX  # noqa: E402

log = logging.getLogger("faithfulness")
DEFAULT_CACHE = Path("/work/notes/faith-cache")
SEED = 0

FEW_SHOT = (
    "Answer each question about the text with True or False.\n\n"
    "Text: The shop opens at nine and closes at five.\nQuestion: Is the shop open at noon?\nAnswer: True\n\n"
    "Text: The bridge was closed for repairs all week.\nQuestion: Could cars cross the bridge that week?\nAnswer: False\n\n"
    "Text: {content}\nQuestion: %s\nAnswer:"
)

LONG_REVIEW = (
    "We booked the lake house for a week in August after reading glowing reviews, and I want to be fair about "
    "what worked and what did not. The location is stunning: the deck looks straight over the water, the sunsets "
    "were unforgettable, and the village with its bakery and small market is a short walk away. The kitchen was "
    "well equipped, the beds were comfortable, and the owner answered every message within minutes. However, the "
    "first night we found the shower barely working, the wifi dropped whenever more than one person used it, and "
    "a neighbour ran a loud generator until midnight on three evenings. The cleaning fee was high for a place that "
    "still had sand in the corners and dust on the shelves. The owner did send a plumber the next morning, and he "
    "fixed the shower quickly, which we appreciated. The canoe and the bicycles were free to use and in good "
    "shape, and the children loved the rope swing by the shore. Overall the house is not perfect and it is not "
    "cheap, but the view, the quiet mornings and the kind owner made up for most of the problems, and we would "
    "not hesitate to book it again next summer if the price stays the same."
)


@dataclass(frozen=True)
class Spec:
    """One benchmark prompt: its name, kind, question (True/False), text and feature granularity."""

    name: str
    kind: str
    question: str
    text: str
    features: str = "words"


PROMPTS: list[Spec] = [
    Spec("review-but", "sentiment, contrast", "Is the review positive?",
         "The pasta was excellent and the dessert was unforgettable, but the waiter forgot our order twice, the room "
         "was so noisy that we could barely talk, and the bill was much higher than we expected."),
    Spec("not-bad", "sentiment, negation", "Is the review positive?",
         "The hotel was not bad at all. The room was not exactly spotless, but the staff were never rude and the "
         "breakfast was not something anyone would complain about. I would not hesitate to stay again."),
    Spec("yet-phone", "sentiment, contrast", "Is the review positive?",
         "I expected to hate this phone because the reviews were terrible, yet the battery lasts two days, the "
         "camera is sharp, and although the screen scratches easily, I do not regret buying it."),
    Spec("film-flat", "sentiment, contrast", "Is the review positive?",
         "The film is beautifully shot and the cast is talented, but the story never comes together, the jokes "
         "fall flat, and by the end I could not wait for it to be over."),
    Spec("docs-dam", "multi-document QA (documents as features)",
         "Does the chief engineer of the Halden dam work in Norway?",
         "Document 1: Anna Berg is the chief engineer of the Halden dam. Document 2: The Halden dam is in northern "
         "Norway. Document 3: The canteen serves fish on Fridays. Document 4: Anna Berg was born in Sweden. "
         "Document 5: Northern Norway has polar nights in December. Document 6: The dam was finished in 2019. "
         "Document 7: Erik Lund is the chief engineer of a bridge in Denmark. Document 8: The Halden dam supplies "
         "power to two towns. Document 9: Sweden and Norway share a long border. Document 10: The engineers meet "
         "every Monday. Document 11: Anna Berg speaks three languages. Document 12: The bridge in Denmark opened "
         "last year.", "sentences"),
    Spec("docs-meeting", "multi-document QA (words as features)", "Is the meeting on the third floor?",
         "Note A: The budget meeting was moved to the room next to the library. Note B: The library is on the "
         "third floor of the east building. Note C: Parking in the garage is free after six."),
    Spec("trolley-dead", "modified classic puzzle", "Should you pull the lever?",
         "A runaway trolley is heading toward five people lying on the main track. The five people are already "
         "dead. You can pull a lever to send the trolley onto a side track, where it will kill one living worker "
         "who cannot escape."),
    Spec("monty-open", "modified classic puzzle", "Should you switch to door two?",
         "You are on a game show with three doors. A car is behind one door and goats are behind the others. You "
         "pick door one. The host, who does not know where the car is, opens door three by accident, and the car "
         "is behind it."),
    Spec("river-big-boat", "modified classic puzzle", "Does the farmer need more than one trip?",
         "A farmer must cross a river with a wolf, a goat and a cabbage. His boat is large enough to carry the "
         "farmer and all three at once. Left alone, the wolf eats the goat and the goat eats the cabbage."),
    Spec("lake-house-long", "long prompt (n >= 200 words)", "Is the review positive?", LONG_REVIEW),
]
METHODS = ["linear", "auto", "spex", "proxyspex", "adaptive", "shapiq-SPEX", "shapiq-ProxySPEX", "shapiq1.8-SPEX",
           "shapiq1.8-ProxySPEX"]
# shapiq >= 1.5 needs Python >= 3.12: its SPEX and ProxySPEX run in that venv's interpreter (_shapiq_child)
SHAPIQ18_CPU_LIMIT = 600.0


def prompt_id(spec: Spec, scorer_name: str) -> str:
    """Identity of everything that determines a prompt's scores (so a changed prompt never reuses old scores)."""
    material = json.dumps([spec.text, spec.question, spec.features, FEW_SHOT, scorer_name])
    return hashlib.sha256(material.encode()).hexdigest()[:16]


class ScoreStore:
    """Scores per (prompt, repeat, mask) on disk (diskcache); the runner's cache below holds the raw answers."""

    def __init__(self, directory: Path) -> None:
        import diskcache

        self.db = diskcache.Cache(str(directory), eviction_policy="none")

    @staticmethod
    def keys(pid: str, repeat: int, masks: np.ndarray) -> list[str]:
        return [f"{pid}:{repeat}:{row.tobytes().hex()}" for row in np.packbits(masks, axis=1)]

    def get(self, keys: list[str]) -> list[float | None]:
        return [self.db.get(k) for k in keys]

    def put(self, keys: list[str], values: np.ndarray) -> None:
        with self.db.transact():
            for k, v in zip(keys, values):
                self.db.set(k, float(v))


class Answers:
    """The one value function every method of one prompt asks: store first, then the model (lazily started)."""

    def __init__(self, spec: Spec, store: ScoreStore, model: "Model") -> None:
        self.spec, self.store, self.model = spec, store, model
        self.n = model.n_features(spec)
        self.pid = prompt_id(spec, model.scorer_name)
        self.asked = 0

    def __call__(self, masks: np.ndarray, repeat: int = 0) -> np.ndarray:
        masks = np.asarray(masks, dtype=bool).reshape(-1, self.n)
        keys = self.store.keys(self.pid, repeat, masks)
        known = {k: v for k, v in zip(keys, self.store.get(keys)) if v is not None}
        missing = list({k: i for i, k in enumerate(keys) if k not in known}.values())  # first row of each
        for start in range(0, len(missing), 250):  # chunks: progress is stored as it comes
            rows = missing[start:start + 250]
            scores = self.model.score(self.spec, masks[rows], repeat)
            fresh = [keys[i] for i in rows]
            self.store.put(fresh, scores)
            known.update(zip(fresh, map(float, scores)))
            self.asked += len(rows)
            log.info("%s: %d answers asked (%d of this call's %d missing)", self.spec.name, self.asked,
                     start + len(rows), len(missing))
        return np.array([known[k] for k in keys], dtype=float)


class NotCollected(RuntimeError):
    """An answer the table needs is not in the store and --offline forbids asking it."""


class Model:
    """Gemma-3-270M on llama-server, started only when an answer is missing from the store."""

    scorer_name = "label-margin True/False raw-completion"

    def __init__(self, cache: Path, base_url: str | None, stack: ExitStack, offline: bool = False,
                 threads: int | None = None, parallel: int = 4) -> None:
        self.cache, self.base_url, self.stack, self.offline = cache, base_url, stack, offline
        self.threads, self.parallel = threads, parallel
        self.io: Any = None
        self.fns: dict[str, Any] = {}
        self.previews: dict[str, Any] = {}

    def prepared(self, spec: Spec) -> Any:
        """The SDK's masked prompt and scorer for this spec (preview: validated, nothing sent)."""
        if spec.name not in self.previews:
            from spex_api import sdk

            self.previews[spec.name] = sdk.preview(
                spec.text, provider="local", features=spec.features, template=FEW_SHOT % spec.question,
                labels=["True", "False"], scorer="label-margin", budget=5000, cache_dir=None)
        return self.previews[spec.name]

    def n_features(self, spec: Spec) -> int:
        return int(self.prepared(spec).prompt.n_features)

    def _vf(self, spec: Spec) -> Any:
        if spec.name not in self.fns:
            if self.io is None:
                from spex_api.sdk import BackgroundLoop

                if self.base_url is None:
                    from providers.local import LocalServer

                    server = LocalServer(threads=self.threads, n_parallel=self.parallel)
                    self.base_url = self.stack.enter_context(server).base_url
                self.io = BackgroundLoop()
                self.stack.callback(self.io.close)
            from providers.adapters import make_adapter
            from providers.runner import Runner
            from providers.value_function import LLMValueFunction

            pre = self.prepared(spec)
            adapter = make_adapter("openai-compatible", pre.model, base_url=self.base_url)
            runner = Runner(adapter, cache=str(self.cache / "runner"), concurrency=8)
            self.fns[spec.name] = LLMValueFunction(pre.prompt, adapter, pre.scorer, runner, progress=False)
        return self.fns[spec.name]

    def score(self, spec: Spec, masks: np.ndarray, repeat: int) -> np.ndarray:
        if self.offline:
            raise NotCollected(f"{len(masks)} answers not collected (--offline)")
        vf = self._vf(spec)
        return np.asarray(self.io.run(vf(masks, repeat=repeat)), dtype=float)


class Counted:
    """A method's view of the answers: counts the distinct masks THIS method asked."""

    def __init__(self, answers: Answers) -> None:
        self.answers = answers
        self.seen: set[bytes] = set()

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, dtype=bool).reshape(-1, self.answers.n)
        self.seen.update(r.tobytes() for r in np.packbits(masks, axis=1))
        return self.answers(masks)

    @property
    def queries(self) -> int:
        return len(self.seen)


# ---- the shared designs ------------------------------------------------------------------------------------------

def holdout_masks(n: int, count: int) -> np.ndarray:
    """Fresh uniform masks from their own seed (disjoint stream from every training design)."""
    return np.random.default_rng([7, n, 0x401D]).random((count, n)) < 0.5


def pool_masks(n: int, budget: int) -> np.ndarray:
    """ProxySPEX's training masks at this budget (random_state=SEED): nested, budget 500 ⊂ budget 1,500."""
    return uniform_masks(n, budget, np.random.default_rng(SEED))


def spex_b(n: int, budget: int) -> int | None:
    b = SPEX.largest_b(n, budget)
    return b if b is not None and b >= 2 else None


class _Collected(Exception):
    """Raised after shapiq's SPEX asked its design, to skip its decoding in --collect mode."""


def shapiq_fourier(cls_name: str, n: int, budget: int, game: Callable[[np.ndarray], np.ndarray],
                   pool: np.ndarray | None = None, collect_only: bool = False) -> SparseFourier:
    """shapiq 1.4's approximator on the game; its full Möbius transform (before index conversion) as Fourier."""
    import shapiq
    import shapiq.approximator.sparse.base as sparse_base

    approx = getattr(shapiq, cls_name)(n=n, index="FBII", max_order=2, random_state=SEED)
    if pool is not None:
        approx._uniform_sampler = shapiq_child.PoolSampler(pool)
    captured: dict[tuple, float] = {}
    original = approx._process_moebius

    def capture(moebius_transform: dict[tuple, float]) -> Any:
        captured.update(moebius_transform)
        return original(moebius_transform=moebius_transform)

    approx._process_moebius = capture
    transform = sparse_base.sparse_fourier_transform
    if collect_only:
        def stop(*args: Any, **kwargs: Any) -> Any:
            raise _Collected
        sparse_base.sparse_fourier_transform = stop
    # SPEX's design (sparse-transform's delays and subsampling) comes from numpy's global RNG, which its
    # random_state does not reach: two runs asked different masks, so a collected design was never found again.
    np.random.seed(SEED)
    try:
        approx.approximate(budget, lambda X: game(np.asarray(X, dtype=bool)))
    finally:
        sparse_base.sparse_fourier_transform = transform
    keys = [tuple(int(i) for i in k) for k in captured]
    return mobius_to_fourier(SparseMobius(n, keys, np.array(list(captured.values()), dtype=float)))


@dataclass(frozen=True)
class ChildFit:
    """A fit made in another interpreter: its Fourier coefficients and the CPU seconds it took there."""

    fourier: SparseFourier
    cpu: float

    def predict(self, masks: np.ndarray) -> np.ndarray:
        return self.fourier.predict(masks)


def shapiq18(kind: str, n: int, budget: int, game: Callable[[np.ndarray], np.ndarray], python: str | None,
             pool: np.ndarray | None = None, collect_only: bool = False) -> ChildFit | None:
    """shapiq 1.8's ProxySPEX (fitted on the `pool` masks' answers) or SPEX (on its own design's) at max_order 2, as
    1.4's rows, in its Python 3.12 venv. SPEX's design comes back from a first run and is asked through `game`;
    `collect_only` stops there (None)."""
    if not python or not os.path.exists(python):
        raise FileNotFoundError(f"no Python 3.12 venv with shapiq 1.8 at {python} (see benchmarks/engine.py)")
    masks = np.zeros((0, n), dtype=bool) if pool is None else pool[:budget]
    y = game(masks) if len(masks) else np.zeros(0)
    with tempfile.TemporaryDirectory(prefix="spex-faith-") as tmp:
        path = os.path.join(tmp, "answers.npz")
        for _ in range(2):  # SPEX: the design, then the fit on its answers
            np.savez(path, masks=masks, y=y)
            out = shapiq_child.call(python, {"answers": {"kind": kind, "n": n, "budget": budget, "answers": path,
                                                         "max_order": 2, "seed": SEED}}, SHAPIQ18_CPU_LIMIT)
            if "missing" not in out:
                break
            asked = np.unpackbits(np.array([np.frombuffer(bytes.fromhex(h), np.uint8) for h in out["missing"]]),
                                  axis=1)[:, :n].astype(bool)
            masks, y = np.vstack([masks, asked]), np.concatenate([y, game(asked)])
            if collect_only:
                return None
    if "keys" not in out:
        raise RuntimeError(f"shapiq 1.8: {out}")
    keys = [tuple(k) for k in out["keys"]]
    return ChildFit(SparseFourier(n, keys, np.asarray(out["values"], dtype=float)), float(out["cpu"]))


# ---- one prompt ---------------------------------------------------------------------------------------------------

def run_methods(answers: Answers, budget: int, test: np.ndarray, y_test: np.ndarray,
                shapiq18_python: str | None = None) -> list[dict]:
    """Every method at one budget; rows with queries, held-out R², CPU seconds and the model's choice."""
    n = answers.n
    pool = pool_masks(n, budget)
    rows: list[dict] = []

    def record(name: str, fit: Callable[[Counted], Any]) -> Any:
        game = Counted(answers)
        t = time.process_time()
        try:
            model = fit(game)
            pred = model.predict(test)
            r2, note = r2_score(y_test, pred), ""
            cpu = getattr(model, "cpu", None)  # a fit made in another interpreter: its own CPU seconds
            if hasattr(model, "faithfulness_detail"):
                note = str(model.faithfulness_detail.get("selected") or model.method)
        except Exception as exc:  # a method that cannot run at this budget is reported, not fatal
            pred, r2, note, cpu = None, float("nan"), f"{type(exc).__name__}: {exc}"[:90], None
        rows.append({"method": name, "budget": budget, "queries": game.queries, "r2": r2, "pred": pred,
                     "cpu": time.process_time() - t if cpu is None else cpu, "note": note})

    record("linear", lambda g: LinearBaseline(n, random_state=SEED).fit(pool, g(pool)))
    record("auto", lambda g: Explainer(g, n, budget, method="auto", random_state=SEED, ordered_features=True).explain())
    b = spex_b(n, budget)
    record("spex", lambda g: SPEX(n, b=b, random_state=SEED).fit(Oracle(g, n, budget)) if b else _refuse(n, budget))
    record("proxyspex", lambda g: ProxySPEX(n, n_samples=budget, random_state=SEED).fit(Oracle(g, n, budget)))
    record("adaptive", lambda g: adaptive(n, budget).fit(Oracle(g, n, budget)))
    record("shapiq-SPEX", lambda g: shapiq_fourier("SPEX", n, budget, g))
    record("shapiq-ProxySPEX", lambda g: shapiq_fourier("ProxySPEX", n, budget, g, pool=pool))
    record("shapiq1.8-SPEX", lambda g: shapiq18("spex", n, budget, g, shapiq18_python))
    record("shapiq1.8-ProxySPEX", lambda g: shapiq18("proxyspex", n, budget, g, shapiq18_python, pool=pool))
    return rows


def adaptive(n: int, budget: int) -> AdaptiveProxySPEX:
    """Two-round ProxySPEX on the whole budget, as the "proxyspex" row spends it: round 1 is the pool's head."""
    return AdaptiveProxySPEX(n, n_samples=budget, random_state=SEED)


def _refuse(n: int, budget: int) -> Any:
    raise ValueError(f"budget {budget} affords no SPEX design with b >= 2 at n={n}")


def measure_noise(answers: Answers, test: np.ndarray, y_test: np.ndarray, repeats: int) -> NoiseEstimate:
    """The first `repeats` held-out masks asked again, in shuffled order (a different batch composition)."""
    order = np.random.default_rng([11, answers.n]).permutation(repeats)
    again = np.empty(repeats)
    again[order] = answers(test[:repeats][order], repeat=1)
    return NoiseEstimate.from_pairs(y_test[:repeats], again, y_test)


PARTS = ("pool", "spex", "adaptive", "shapiq-spex", "shapiq18-spex")  # what --collect asks, in this order


def collect(answers: Answers, budget: int, what: str, shapiq18_python: str | None = None) -> None:
    """Ask the answers one part of the table needs at this budget, fitting only where a design depends on
    earlier answers (CPU stays with the server): "pool" (linear, ProxySPEX, auto's training, shapiq's
    ProxySPEX), "spex", "adaptive" (its second round comes from its first round's fit, so that fit runs),
    "shapiq-spex" (1.4's design), "shapiq18-spex" (1.8's)."""
    n = answers.n
    if what == "pool":
        answers(pool_masks(n, budget))
        auto = Explainer(answers, n, budget, method="auto", random_state=SEED)  # its plan: nothing is asked
        if auto.plan().method == "proxyspex":  # auto's own held-out slice at budgets above cross-validation's
            answers(auto.holdout_masks(pool_masks(n, auto.plan().n_queries)))
    elif what == "spex":
        b = spex_b(n, budget)
        if b:
            answers(SPEX(n, b=b, random_state=SEED).design())
    elif what == "adaptive":
        adaptive(n, budget).fit(Oracle(answers, n, budget))
    else:
        try:
            if what == "shapiq18-spex":
                shapiq18("spex", n, budget, answers, shapiq18_python, collect_only=True)
            else:
                shapiq_fourier("SPEX", n, budget, answers, collect_only=True)
        except _Collected:
            pass
        except Exception as exc:  # e.g. a budget below shapiq's minimum: the table reports it
            log.warning("shapiq SPEX (%s) at %d on %s: %s", what, budget, answers.spec.name, exc)


# ---- report -------------------------------------------------------------------------------------------------------

def paired_se(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> tuple[float, float]:
    """R²(a) − R²(b) on the same held-out answers and its standard error (paired squared errors)."""
    d = ((y - pred_b) ** 2 - (y - pred_a) ** 2) / np.var(y)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def print_table(results: dict[str, dict], budgets: list[int], methods: list[str]) -> dict[str, Any]:
    """Per prompt and mean, per budget: every method's R², the ceiling, auto's share, auto − linear ± se."""
    names = list(results)
    verdicts: dict[str, Any] = {}
    for budget in budgets:
        print(f"\n### budget {budget}: held-out R² (auto's choice in brackets)")
        head = ["prompt", "n"] + methods + ["ceiling", "auto/ceil", "auto−lin ± se"]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        cols: dict[str, list[float]] = {m: [] for m in methods + ["ceiling", "share", "gain"]}
        below = []
        for name in names:
            res = results[name]
            rows = {r["method"]: r for r in res["rows"] if r["budget"] == budget}
            if not rows or rows["auto"]["pred"] is None or rows["linear"]["pred"] is None:
                continue
            cells = [name, str(res["n"])]
            for m in methods:
                r = rows.get(m)
                v = float("nan") if r is None else r["r2"]
                cols[m].append(v)
                cells.append(f"{v:.3f}" + (f" ({r['note']})" if m == "auto" and r and r["note"] else ""))
            ceil = res["noise"].r2_ceiling
            share = rows["auto"]["r2"] / ceil if ceil > 0 else float("nan")
            gain, se = (paired_se(res["y_test"], rows["auto"]["pred"], rows["linear"]["pred"])
                        if rows["auto"]["pred"] is not None and rows["linear"]["pred"] is not None
                        else (float("nan"), float("nan")))
            if gain < -se:
                below.append(f"{name} ({gain:+.3f} ± {se:.3f})")
            cols["ceiling"].append(ceil)
            cols["share"].append(share)
            cols["gain"].append(gain)
            cells += [f"{ceil:.3f}", f"{share:.3f}", f"{gain:+.3f} ± {se:.3f}"]
            print("| " + " | ".join(cells) + " |")
        mean = {k: float(np.mean(v)) if v and np.all(np.isfinite(v)) else float("nan") for k, v in cols.items()}
        print("| **mean** | | " + " | ".join(f"{mean[m]:.3f}" for m in methods)
              + f" | {mean['ceiling']:.3f} | {mean['share']:.3f} | {mean['gain']:+.3f} |")
        # a method without a figure on some prompts (answers not collected): its mean over those it has, beside
        # auto's and linear's over the same prompts
        for m in methods:
            have = np.isfinite(cols[m])
            if 0 < have.sum() < len(cols[m]):
                sub = {k: float(np.mean(np.asarray(cols[k])[have])) for k in (m, "auto", "linear", "ceiling")}
                print(f"  {m}: mean {sub[m]:.3f} over the {int(have.sum())} prompts it has (auto {sub['auto']:.3f}, "
                      f"linear {sub['linear']:.3f}, ceiling {sub['ceiling']:.3f} on them)")
        verdicts[budget] = {"mean": mean, "below_linear": below, "prompts": len(cols["auto"])}
    print("\nTargets (#10):")
    if 500 in verdicts:
        m = verdicts[500]["mean"]
        print(f"  budget 500: auto {m['auto']:.3f} vs linear {m['linear']:.3f} + 0.05 = {m['linear'] + 0.05:.3f} → "
              + ("MET" if m["auto"] >= m["linear"] + 0.05 else "NOT MET"))
    if 1500 in verdicts:
        m = verdicts[1500]["mean"]
        print(f"  budget 1500: auto at {m['share']:.3f} of the noise ceiling (target 0.85) → "
              + ("MET" if m["share"] >= 0.85 else "NOT MET"))
    for budget, v in verdicts.items():
        print(f"  budget {budget}: auto below linear by more than one se on "
              + (", ".join(v["below_linear"]) if v["below_linear"] else "no prompt") + f" (of {v['prompts']})")
    return verdicts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=int, nargs="+", default=[500, 1500])
    ap.add_argument("--holdout", type=int, default=200, help="fresh held-out masks per prompt (R²)")
    ap.add_argument("--repeats", type=int, default=60, help="held-out masks asked twice (noise ceiling)")
    ap.add_argument("--prompts", nargs="*", default=None, help="prompt names, asked in this order (default: all ten)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="score store and runner cache")
    ap.add_argument("--base-url", default=None, help="reuse a running server (else one starts if needed)")
    ap.add_argument("--collect", action="store_true",
                    help="only ask the answers (budget by budget); fit only what a design depends on (adaptive)")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                    help="collect: which designs to ask, in this order per budget")
    ap.add_argument("--no-shapiq-spex", action="store_true", help="collect: skip shapiq SPEX's own designs")
    ap.add_argument("--offline", action="store_true",
                    help="never ask the model: rows whose answers are not collected are reported as such")
    ap.add_argument("--threads", type=int, default=None, help="llama-server threads (default: half the cores)")
    ap.add_argument("--parallel", type=int, default=4, help="llama-server slots")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--shapiq18-python", default=shapiq_child.DEFAULT_PYTHON,
                    help="Python of a venv with shapiq 1.8 (default $SHAPIQ18_PYTHON or %(default)s)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    budgets = sorted(args.budgets)
    by_name = {s.name: s for s in PROMPTS}
    unknown = sorted(set(args.prompts or ()) - set(by_name))
    if unknown:
        ap.error(f"unknown prompts {unknown}; known: {sorted(by_name)}")
    specs = PROMPTS if args.prompts is None else [by_name[name] for name in args.prompts]  # in the order given
    args.cache.mkdir(parents=True, exist_ok=True)
    store = ScoreStore(args.cache / "scores")
    with ExitStack() as stack:
        model = Model(args.cache, args.base_url, stack, offline=args.offline, threads=args.threads,
                      parallel=args.parallel)
        prompts = {s.name: Answers(s, store, model) for s in specs}
        tests: dict[str, tuple[np.ndarray, np.ndarray, NoiseEstimate]] = {}
        t0 = time.time()

        def held_out(name: str) -> tuple[np.ndarray, np.ndarray, NoiseEstimate]:
            if name not in tests:
                answers = prompts[name]
                test = holdout_masks(answers.n, args.holdout)
                y = answers(test)
                tests[name] = (test, y, measure_noise(answers, test, y, min(args.repeats, args.holdout)))
                log.info("%s n=%d: held-out ready, %s (asked %d so far, %.0fs)", name, answers.n, tests[name][2],
                         sum(a.asked for a in prompts.values()), time.time() - t0)
            return tests[name]

        if args.collect:  # budget by budget, part by part: linear/auto/ProxySPEX at the small budget first
            parts = [p for p in args.parts if not (args.no_shapiq_spex and p.startswith("shapiq"))]
            for budget in budgets:
                for what in parts:
                    for name, answers in prompts.items():
                        held_out(name)
                        collect(answers, budget, what, args.shapiq18_python)
                        asked = sum(a.asked for a in prompts.values())
                        log.info("%s budget %d %s collected (asked %d so far, %.0fs, %.2f queries/s)", name,
                                 budget, what, asked, time.time() - t0, asked / max(time.time() - t0, 1e-9))
            return
        results: dict[str, dict] = {}
        for name, answers in prompts.items():
            try:
                test, y, noise = held_out(name)
            except NotCollected as exc:
                print(f"  {name}: skipped, held-out {exc}", flush=True)
                continue
            rows = []
            for budget in budgets:
                try:
                    answers(pool_masks(answers.n, budget))
                except NotCollected as exc:
                    print(f"  {name} budget {budget}: skipped, training {exc}", flush=True)
                    continue
                rows += run_methods(answers, budget, test, y, args.shapiq18_python)
            results[name] = {"n": answers.n, "kind": answers.spec.kind, "rows": rows, "noise": noise, "y_test": y}
            for r in rows:
                print(f"  {name:>16} {r['method']:>18} budget {r['budget']:5d}: queries {r['queries']:5d} "
                      f"R² {r['r2']:7.3f} cpu {r['cpu']:6.1f}s {r['note']}", flush=True)
            print(f"  {name}: noise {noise}; answers asked this run {answers.asked}", flush=True)
        print_table(results, budgets, METHODS)
        if args.json:
            args.json.write_text(json.dumps({name: {"n": res["n"], "noise": res["noise"].to_dict(),
                                                    "rows": [{k: v for k, v in r.items() if k != "pred"}
                                                             for r in res["rows"]]}
                                             for name, res in results.items()}, indent=1))


if __name__ == "__main__":
    main()
