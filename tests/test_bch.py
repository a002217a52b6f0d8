"""BCH codes behind SPEX's delay rows: parameters, encoding, hard and Chase decoding."""

from __future__ import annotations

import numpy as np
import pytest

from spex_api.engine.bch import BCHCode, bch_code, bch_parity_length


@pytest.mark.parametrize(
    "n, P",
    [(1, 14), (2, 20), (11, 20), (12, 27), (36, 27), (37, 35), (92, 35), (93, 40), (215, 40), (216, 45),
     (466, 45), (467, 50), (973, 50), (974, 55), (1992, 55), (1993, 60)],
)
def test_parity_length_table_t5(n: int, P: int) -> None:
    assert bch_parity_length(n, 5) == P


def test_parity_length_t3() -> None:
    assert bch_parity_length(100, 3) == 21
    assert bch_parity_length(1000, 3) == 33


def test_parity_length_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        bch_parity_length(0, 5)
    with pytest.raises(ValueError):
        bch_parity_length(10, 0)


def _error_words(code: BCHCode, rng: np.random.Generator, W: int, max_weight: int) -> tuple[np.ndarray, np.ndarray]:
    codewords = code.encode(rng.random((W, code.n)) < 0.5)
    errors = np.zeros_like(codewords)
    weights = rng.integers(0, max_weight + 1, W)
    for i, w in enumerate(weights):
        errors[i, rng.choice(code.length, w, replace=False)] = True
    return codewords, errors


def _as_bool(pos: np.ndarray, length: int) -> np.ndarray:
    out = np.zeros((len(pos), length), dtype=bool)
    rows, cols = np.nonzero(pos >= 0)
    out[rows, pos[rows, cols]] = True
    return out


@pytest.mark.parametrize("n, t", [(10, 5), (100, 3), (256, 5), (1000, 5), (50, 2), (300, 8)])
def test_codewords_have_zero_syndrome_and_errors_up_to_t_are_corrected(n: int, t: int) -> None:
    code = bch_code(n, t)
    assert code.parity_matrix.shape == (code.P, n)
    rng = np.random.default_rng(n + t)
    codewords, errors = _error_words(code, rng, 400, t)
    assert not code.syndrome_bits(codewords).any()
    pos, ok = code.decode(codewords ^ errors)
    assert ok.all()
    np.testing.assert_array_equal(_as_bool(pos, code.length), errors)


def test_parity_is_linear_and_matches_generator_divisibility() -> None:
    code = bch_code(40, 4)
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 50, 40)) < 0.5
    np.testing.assert_array_equal(code.parity(a ^ b), code.parity(a) ^ code.parity(b))
    # Every codeword polynomial (parity at x^0..x^(P-1), message at x^P..) is a multiple of g(x).
    word = code.encode(a[:1])[0]
    poly = np.concatenate([word[code.n :], word[: code.n]]).astype(int)
    gen = code.generator.astype(int)
    for top in range(len(poly) - 1, len(gen) - 2, -1):
        if poly[top]:
            poly[top - len(gen) + 1 : top + 1] ^= gen
    assert not poly.any()


def test_beyond_capacity_never_returns_a_non_codeword() -> None:
    code = bch_code(200, 3)
    rng = np.random.default_rng(1)
    words = rng.random((2000, code.length)) < 0.5
    pos, ok = code.decode(words)
    corrected = words[ok] ^ _as_bool(pos[ok], code.length)
    assert not code.syndrome_bits(corrected).any()
    assert (pos[ok] >= 0).sum(axis=1).max() <= 3


def test_chase_corrects_extra_errors_on_unreliable_positions() -> None:
    """SPEX words: message part 0, parity bits of k with noise; extra flips sit where |soft| is small."""
    n, t = 300, 4
    code = bch_code(n, t)
    rng = np.random.default_rng(2)
    W = 300
    k = np.zeros((W, n), dtype=bool)
    for i in range(W):
        k[i, rng.choice(n, rng.integers(1, t + 1), replace=False)] = True
    parity = code.parity(k)
    soft = np.where(parity, -1.0, 1.0) * rng.uniform(0.5, 1.5, parity.shape)
    # Two extra sign errors with the smallest magnitudes: total errors = |k| + 2 may exceed t.
    flip = np.argsort(rng.random(parity.shape), axis=1)[:, :2]
    rows = np.arange(W)[:, None]
    soft[rows, flip] = -0.05 * np.sign(soft[rows, flip])
    words = np.concatenate([np.zeros((W, n), dtype=bool), soft < 0], axis=1)
    reliability = np.concatenate([np.full((W, n), np.inf), np.abs(soft)], axis=1)

    def correct(pos: np.ndarray, ok: np.ndarray) -> np.ndarray:
        return ok & (_as_bool(pos, code.length)[:, :n] == k).all(axis=1)

    def soft_fit(rows: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Veto corrections whose implied parity signs disagree with confident soft values."""
        msg = _as_bool(pos, code.length)[:, :n]
        disagree = code.parity(msg) != (soft[rows] < 0)
        return (np.abs(soft[rows]) * disagree).sum(axis=1) < 0.5

    hard = correct(*code.decode(words))
    chase = correct(*code.decode(words, reliability, chase_depth=2 * t, chase_patterns=16))
    vetted = correct(*code.decode(words, reliability, chase_depth=2 * t, chase_patterns=16, accept=soft_fit))
    assert hard.mean() < 0.9  # words with |k| + 2 > t are beyond hard decoding
    assert chase.mean() > hard.mean() + 0.05
    assert vetted.all()  # a vetoed mis-correction moves on to the next Chase pattern
    pos, ok = code.decode(words, reliability, chase_depth=2 * t, chase_patterns=16)
    assert pos.shape[1] == 3 * t
    assert ((pos[ok] >= 0) & (pos[ok] < n)).sum(axis=1).max() <= t  # message positions (reliability inf) are never flipped


def test_chase_with_fewer_flippable_positions_than_depth() -> None:
    code = bch_code(60, 3)
    rng = np.random.default_rng(4)
    k = np.zeros((20, 60), dtype=bool)
    for row in k:
        row[rng.choice(60, 2, replace=False)] = True
    words = np.concatenate([np.zeros_like(k), code.parity(k)], axis=1)
    words[:, 60:62] ^= True  # 2 parity errors + 2 message errors: beyond t = 3
    reliability = np.full(words.shape, np.inf)
    reliability[:, 60:62] = 0.1  # only the two wrong positions may be flipped; depth asks for 6
    assert not code.decode(words)[1].any()
    pos, ok = code.decode(words, reliability, chase_depth=6)
    assert ok.all() and pos.shape == (20, 9)
    np.testing.assert_array_equal(_as_bool(pos, code.length)[:, :60], k)


def test_cached_code_is_shared() -> None:
    assert bch_code(64, 5) is bch_code(64, 5)
