"""Neighbour-pair Lasso: finds pairs of features close in order, keeps the window CV prefers, plugs into auto."""

import numpy as np

from spex_api.engine.diagnostics import Diagnostics
from spex_api.engine.explainer import Explainer
from spex_api.engine.fourier import r2_score
from spex_api.engine.neighbours import NeighbourLasso, neighbour_pairs
from spex_api.engine.proxyspex import uniform_masks


def _local(masks: np.ndarray) -> np.ndarray:
    """Main effects plus two neighbour pairs ("not"+"bad" style) and one pair three apart."""
    x = masks.astype(float)
    return 1.0 * x[:, 0] - 0.5 * x[:, 5] + 2.0 * x[:, 10] * x[:, 11] - 1.5 * x[:, 20] * x[:, 23] + x[:, 30] * x[:, 31]


def test_neighbour_pairs_lists_every_pair_within_the_window_once() -> None:
    assert neighbour_pairs(4, 2) == [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3)]
    assert neighbour_pairs(1, 3) == []


def test_recovers_neighbour_pairs_and_picks_a_window_that_covers_them() -> None:
    n = 40
    rng = np.random.default_rng(0)
    masks = uniform_masks(n, 400, rng)
    expl = NeighbourLasso(n).fit_answers(masks, _local(masks))
    keys = set(expl.fourier.keys)
    assert {(10, 11), (20, 23), (30, 31)} <= keys
    assert expl.diagnostics is not None and expl.diagnostics.params["window"] >= 3
    test = rng.random((300, n)) < 0.5
    assert r2_score(_local(test), expl.predict(test)) > 0.99
    again = Diagnostics.from_dict(expl.diagnostics.to_dict())
    assert again.details == expl.diagnostics.details


def test_main_effects_alone_when_there_is_no_pair() -> None:
    n = 30
    masks = uniform_masks(n, 300, np.random.default_rng(1))
    y = masks @ np.linspace(-1, 1, n) + np.random.default_rng(2).normal(0, 0.05, len(masks))
    expl = NeighbourLasso(n).fit_answers(masks, y)
    assert expl.diagnostics is not None
    assert sum(len(k) == 2 for k in expl.fourier.keys) <= 3
    # widths 1 and 2 do not beat main effects alone: the wider (costlier) ones are not fitted
    assert sorted(expl.diagnostics.details.cv_mse_by_window) == [0, 1, 2]


def test_explainer_compares_the_family_only_for_ordered_features() -> None:
    n = 40
    plain = Explainer(_local, n, 400, random_state=0)
    ordered = Explainer(_local, n, 400, random_state=0, ordered_features=True)
    assert "neighbours" not in plain._families()
    assert "neighbours" in ordered._families()
    expl = ordered.explain()
    assert expl.faithfulness is not None and expl.faithfulness > 0.95  # the pairs are found, not linear
