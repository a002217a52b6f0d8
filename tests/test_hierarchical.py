"""Hierarchical pairwise Lasso: finds planted pairs from main effects, stays first-order on additive
functions, and competes with ProxySPEX inside the Explainer on the same answers."""

import numpy as np
import pytest

from benchmarks._planted import mobius_to_fourier, planted_additive, random_masks
from spex_api.engine.explainer import Explainer
from spex_api.engine.fourier import r2_score
from spex_api.engine.hierarchical import HierarchicalLasso, strong_triples


def _pairwise(n=30, seed=0):
    """Main effects on 8 features and AND-pairs among them (a hierarchical pairwise function)."""
    rng = np.random.default_rng(seed)
    feats = rng.choice(n, size=8, replace=False).tolist()
    mobius = {(): 1.0, **{(i,): rng.normal() for i in feats}}
    for a, b in [(feats[0], feats[1]), (feats[2], feats[3]), (feats[1], feats[4])]:
        mobius[tuple(sorted((a, b)))] = 2.0 * rng.choice((-1.0, 1.0))
    return mobius_to_fourier(n, mobius)


def test_recovers_planted_pairs_from_few_answers():
    truth = _pairwise()
    masks = random_masks(30, 200, seed=1)
    expl = HierarchicalLasso(30, random_state=0).fit_answers(masks, truth.predict(masks))
    test = random_masks(30, 500, seed=2)
    assert r2_score(truth.predict(test), expl.predict(test)) > 0.99
    true_pairs = {k for k in truth.keys if len(k) == 2}
    assert true_pairs <= set(expl.fourier.keys)
    assert [s.order for s in expl.diagnostics.details.stages][:2] == [1, 2]


def test_additive_function_keeps_no_pairs():
    f = planted_additive(20, noise=0.2, seed=3)
    masks = random_masks(20, 300, seed=4)
    expl = HierarchicalLasso(20, random_state=0).fit_answers(masks, f(masks))
    assert expl.fourier.degree <= 2
    stages = expl.diagnostics.details.stages
    assert stages[0].order == 1 and (len(stages) == 1 or not stages[1].kept or expl.fourier.degree == 2)


def test_strong_triples_need_all_three_pairs():
    assert strong_triples([(0, 1), (0, 2), (1, 2), (1, 3), (0, 3)]) == [(0, 1, 2), (0, 1, 3)]
    assert strong_triples([(0, 1), (1, 2)]) == []


def test_bad_parameters_fail_before_any_query():
    for kwargs in ({"n": 0}, {"n": 5, "max_pairs": 0}, {"n": 5, "cv_folds": 1}, {"n": 5, "max_order": 0}):
        with pytest.raises(ValueError):
            HierarchicalLasso(**kwargs)


def test_explainer_records_the_family_it_chose():
    truth = _pairwise()
    calls = []

    def f(masks):
        calls.append(len(masks))
        return truth.predict(masks)

    expl = Explainer(f, 30, 200, random_state=0).explain()
    sel = expl.faithfulness_detail["selection"]
    assert set(sel["families"]) == {"proxyspex", "hierarchical", "kernel"}
    assert sel["family"] == max(sel["families"], key=sel["families"].get)
    assert sel["family"] in sel["why"]
    assert expl.method == sel["family"] and sum(calls) == expl.queries_used <= 200
