"""The Explanation result object: ranking, names, JSON round trip, shapiq conversion."""

import dataclasses
import json

import numpy as np
import pytest

from spex_api.engine.diagnostics import Diagnostics, GridPoint, ProxyRefit, ProxySpexDetails, ResidualPass
from spex_api.engine.explanation import Explanation, Interaction
from spex_api.engine.fourier import SparseFourier
from spex_api.engine.metadata import QueryStats, RunMetadata


def make(**kwargs):
    f = SparseFourier(4, [(), (0,), (1, 2), (0, 1, 3)], [2.0, -0.5, 1.5, 0.25])
    return Explanation(fourier=f, method="proxyspex", queries_used=123, **kwargs)


def test_ranking_names_and_top():
    e = make(feature_names=["the", "cat", "sat", "down"])
    ranked = e.interactions()
    assert ranked[0] == Interaction((1, 2), 1.5, ("cat", "sat"))
    assert [i.features for i in ranked] == [(1, 2), (0,), (0, 1, 3)]
    assert e.top(1) == ranked[:1]
    assert e.interactions(include_empty=True)[0].features == ()
    assert make().top(1)[0].names == ("x1", "x2")
    assert all(len(i.features) <= 2 for i in e.interactions(order=2))
    with pytest.raises(ValueError):
        make(feature_names=["a"])


def test_predict_and_mobius_agree():
    e = make()
    X = np.random.default_rng(0).random((50, 4)) < 0.5
    assert np.allclose(e.predict(X), e.fourier.predict(X))
    assert np.allclose(e.mobius.predict(X), e.predict(X))
    assert e.n == 4


def test_k_sii_is_efficient():
    e = make()
    ksii = e.interactions("k-SII", order=2)
    full = e.predict(np.ones((1, 4), bool))[0] - e.predict(np.zeros((1, 4), bool))[0]
    assert sum(i.value for i in ksii) == pytest.approx(full)


class FakePlan:
    def to_dict(self):
        return {"method": "proxyspex", "total": 200}


def test_json_round_trip(tmp_path):
    from spex_api.engine.planner import plan

    e = make(
        plan=plan(4, 200, method="proxyspex"),
        faithfulness=0.97,
        faithfulness_detail={"n_holdout": np.int64(10), "r2_linear": np.float64(0.5)},
        feature_names=["a", "b", "c", "d"],
        cost=0.0123,
        metadata={"answer": "yes", "scores": np.arange(3)},
        diagnostics=Diagnostics(
            method="proxyspex", rows_used=190, n_coefficients=3, cv_mse=0.25, cpu_seconds=1.5,
            params={"max_depth": 3, "learning_rate": 0.1, "rounds": 40}, reasons=("chosen",),
            others={"linear": Diagnostics(method="linear", rows_used=190, n_coefficients=2, cv_r2=float("nan"))},
            details=ProxySpexDetails(
                grid=(GridPoint(3, 0.1, 40, 0.25),), n_extracted={3: 12}, n_candidates=9, lightgbm_seed=7,
                refit=ProxyRefit(True, 0.2, 0.22, 1e-3, 2, (ResidualPass(4, 0.19, True),)),
                cpu_seconds_by_stage={"tune": 1.0})),
    )
    text = e.to_json()
    data = json.loads(text)
    assert data["fourier"]["keys"][2] == [1, 2]
    back = Explanation.from_json(text)
    assert back.fourier.to_dict() == e.fourier.to_dict()
    assert (back.method, back.queries_used, back.faithfulness, back.cost) == ("proxyspex", 123, 0.97, 0.0123)
    assert back.feature_names == e.feature_names
    assert back.metadata == {"answer": "yes", "scores": [0, 1, 2]}
    # every typed field comes back (a NaN is saved as null, so it reads back as None)
    assert back.diagnostics == dataclasses.replace(
        e.diagnostics, others={"linear": dataclasses.replace(e.diagnostics.others["linear"], cv_r2=None)})
    assert back.plan == e.plan
    # A plan dict this version cannot rebuild is kept as a dict rather than losing the explanation.
    odd = Explanation.from_json(make(plan=FakePlan()).to_json())
    assert odd.plan == {"method": "proxyspex", "total": 200}
    path = e.save(tmp_path / "e.json")
    assert Explanation.load(path).interactions("shapley") == e.interactions("shapley")
    assert "proxyspex" in e.summary() and "b × c" in e.summary()


def test_diagnostics_saved_before_the_typed_record_still_load():
    """A file written when diagnostics were a per-algorithm dict: its common figures are read under their old
    names and every field is kept as saved."""
    data = json.loads(make().to_json())
    data["diagnostics"] = {"n_samples": 200, "grid": [{"max_depth": 3}], "n_coefficients": 4, "cpu_seconds": 0.5,
                           "fallback": "linear", "note": "interactions did not pay"}
    back = Explanation.from_dict(data).diagnostics
    assert (back.method, back.rows_used, back.n_coefficients, back.cpu_seconds) == ("proxyspex", 200, 4, 0.5)
    assert back.fallback == "linear" and back.reasons == ("interactions did not pay",)
    assert back.legacy == data["diagnostics"]
    again = Explanation.from_json(Explanation.from_dict(data).to_json()).diagnostics
    assert again == back  # and it survives being saved again
    data["diagnostics"] = {"method": "spex", "rows_used": 3, "n_coefficients": 1, "details": {"b": "x"}}
    with pytest.raises(ValueError, match="diagnostics"):
        Explanation.from_dict(data)


def test_to_shapiq():
    shapiq = pytest.importorskip("shapiq")
    e = make()
    iv = e.to_shapiq("k-SII", order=2)
    assert isinstance(iv, shapiq.InteractionValues)
    assert iv.index == "k-SII" and iv.max_order == 2 and iv.n_players == 4
    ours = e.values("k-sii", 2)
    for key, value in ours.items():
        assert iv[key] == pytest.approx(value)
    assert iv.baseline_value == pytest.approx(e.predict(np.zeros((1, 4), bool))[0])
    assert float(np.sum(iv.values)) == pytest.approx(e.predict(np.ones((1, 4), bool))[0])
    assert e.to_shapiq("SV").index == "SV"
    with pytest.raises(ValueError, match="shapiq has no"):
        e.to_shapiq("fourier")


def test_noise_and_removal_records_round_trip():
    from spex_api.engine.explanation import NoiseEstimate, RemovalCheck

    assert make().noise is None and make().removal is None
    assert Explanation.from_json(make().to_json()).noise is None
    rng = np.random.default_rng(1)
    signal = rng.normal(0, 1, 400)
    first, second = signal + rng.normal(0, 0.3, 400), signal + rng.normal(0, 0.3, 400)
    noise = NoiseEstimate.from_pairs(first, second, first)
    assert noise.n_pairs == 400
    assert noise.noise_sd == pytest.approx(0.3, rel=0.15)
    assert noise.r2_ceiling == pytest.approx(1 - 0.09 / 1.09, abs=0.05)
    assert NoiseEstimate.from_pairs(signal, signal, signal).r2_ceiling == 1.0
    with pytest.raises(ValueError):
        NoiseEstimate.from_pairs(first[:3], second[:4], first)
    removal = RemovalCheck("banzhaf", [{"removed": [1], "predicted": -1.0, "measured": -0.8},
                                       {"removed": [1, 2], "predicted": -2.5, "measured": -2.1}])
    e = make(faithfulness=0.8, noise=noise, removal=removal, feature_names=["the", "cat", "sat", "down"])
    back = Explanation.from_json(e.to_json())
    assert back.noise == noise and back.removal == removal
    assert back.faithfulness_share == pytest.approx(0.8 / noise.r2_ceiling)
    text = e.summary()
    assert "R² ceiling" in text and "removal check" in text and "+sat" in text


def test_run_metadata_is_typed_reads_like_a_mapping_and_round_trips():
    meta = RunMetadata(original_answer="True", original_score=1.5, feature_texts=["a", "b"],
                       feature_spans=[[0, 1], [2, 3]], labels=["True", "False"], budget=60,
                       stats=QueryStats(queries_sent=3, cache_hits=2))
    assert meta.feature_spans == ((0, 1), (2, 3)) and meta["original_answer"] == "True"
    assert meta["stats"]["queries_sent"] == 3 and meta.get("model") is None and "budget" in meta
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.budget = 1  # type: ignore[misc]
    expl = Explanation(SparseFourier(2, [(0,)], [1.0]), "spex", 4, metadata=meta)
    data = json.loads(expl.to_json())
    assert data["metadata"]["feature_spans"] == [[0, 1], [2, 3]] and data["metadata"]["stats"]["cache_hits"] == 2
    back = Explanation.from_json(expl.to_json())
    assert isinstance(back.metadata, RunMetadata) and back.metadata == meta
    # metadata that is not a run's (or from another version) stays the dict it was saved as
    odd = Explanation.from_dict({**data, "metadata": {"original_answer": "x", "unknown": 1}})
    assert odd.metadata == {"original_answer": "x", "unknown": 1}
    assert RunMetadata.of(odd.metadata).original_answer == "x"
