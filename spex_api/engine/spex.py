"""SPEX: sparse Fourier recovery of a value function from BCH-coded subsampling designs.

Each of C groups draws a random M_c in {0,1}^{n x b}; one delay matrix D (row 0 zeros, rows 1..P the
parity rows of a BCH code shortened to n) is shared. Queries are x = M_c l XOR d_p for every l in
F_2^b and every row p, so C (P+1) 2^b in all. A 2^b-point Walsh-Hadamard transform of each block
aliases the Fourier coefficients into bins; a bin holding one interaction k (a singleton) carries
k's BCH parity signs across the delay rows, and decoding recovers k. Peeling re-fits every term found
so far jointly on the bins and subtracts the fit in every group, exposing more singletons. A final
cross-validated least-squares refit over the recovered support, the empty set and all singletons
uses every sample; its Gram matrix and moments come straight from the bins, so it costs
O(#candidates * bin load), not O(samples * candidates).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import cg

from spex_api.engine.bch import BCHCode, bch_code
from spex_api.engine.design import SPEX_B_MAX as _B_MAX
from spex_api.engine.design import spex_largest_b, spex_queries
from spex_api.engine.diagnostics import Diagnostics, SpexDetails, SpexRefit
from spex_api.engine.explanation import Explanation
from spex_api.engine.masks import row_ids
from spex_api.engine.fourier import Key, SparseFourier, fwht, incidence
from spex_api.engine.oracle import Oracle, ValueFunction
from spex_api.engine.seeding import RandomState, check_random_state, stream

# Default Chase work per peeling round (trial words), split over the bins being decoded.
_CHASE_WORK = 1 << 18


class SPEX:
    """Sparse Fourier explanation with BCH-coded masking designs (SPEX, arXiv 2502.13870).

    Parameters
    ----------
    n: number of features.
    max_order: largest interaction order decoded (BCH correction capacity t).
    b: log2 of the bins per group; None = choose from the Oracle's remaining budget in `fit`.
    decoder: "soft" (Chase decoding on the real-valued delay ratios) or "hard" (signs only).
    refit: run the cross-validated least-squares refit over support + {} + all singletons.
    n_groups: number C of independent subsampling groups.
    random_state: int, np.random.Generator or None; seeds the subsampling matrices (the only random
        draw). It is turned into one fixed seed at construction, so design() and fit() always agree.
    chase_depth: least reliable parity positions the Chase decoder may flip (default 2t).
    chase_patterns: cheapest flip patterns tried per failed bin; None = as many as fit a fixed
        work budget of about 2^18 trial words per peeling round (at most 1023, at least 64).
    acceptance: a decoded k is kept when ||col - rho s||^2 / ||col||^2 is below this.
    max_rounds, patience: peeling stops after max_rounds, or after `patience` rounds finding nothing new.
    """

    def __init__(
        self,
        n: int,
        max_order: int = 5,
        b: int | None = None,
        decoder: str = "soft",
        refit: bool = True,
        n_groups: int = 3,
        random_state: RandomState = 0,
        chase_depth: int | None = None,
        chase_patterns: int | None = None,
        acceptance: float = 0.9,
        max_rounds: int = 100,
        patience: int = 15,
    ) -> None:
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if int(max_order) < 1:
            raise ValueError(f"max_order must be >= 1, got {max_order}")
        if b is not None and not 1 <= int(b) <= _B_MAX:
            raise ValueError(f"b must be in [1, {_B_MAX}], got {b}")
        if decoder not in ("soft", "hard"):
            raise ValueError(f"decoder must be 'soft' or 'hard', got {decoder!r}")
        if int(n_groups) < 1:
            raise ValueError(f"n_groups must be >= 1, got {n_groups}")
        if not 0.0 < acceptance <= 1.0:
            raise ValueError(f"acceptance must be in (0, 1], got {acceptance}")
        self.n = int(n)
        self.max_order = int(max_order)
        self.b = None if b is None else int(b)
        self.decoder = decoder
        self.refit = bool(refit)
        self.n_groups = int(n_groups)
        # None means "fresh entropy", fixed once here so design() and fit() agree.
        self.random_state = random_state
        self._seed = check_random_state(random_state)
        self.chase_depth = chase_depth
        if chase_patterns is not None and int(chase_patterns) < 1:
            raise ValueError(f"chase_patterns must be >= 1 or None, got {chase_patterns}")
        self.chase_patterns = None if chase_patterns is None else int(chase_patterns)
        self.acceptance = float(acceptance)
        self.max_rounds = int(max_rounds)
        self.patience = int(patience)

    # ------------------------------------------------------------------ budget arithmetic
    @staticmethod
    def n_queries(n: int, b: int, max_order: int = 5, n_groups: int = 3) -> int:
        """Exact size of the design: C * (P + 1) * 2^b (before de-duplication)."""
        return spex_queries(n, b, max_order, n_groups)

    @staticmethod
    def largest_b(n: int, budget: int, max_order: int = 5, n_groups: int = 3) -> int | None:
        """Largest b >= 1 whose design fits the budget (None if even b = 1 does not), by formula."""
        return spex_largest_b(n, budget, max_order, n_groups)

    # ------------------------------------------------------------------ design
    @property
    def code(self) -> BCHCode:
        return bch_code(self.n, self.max_order)

    def delays(self) -> np.ndarray:
        """(P+1, n) delay matrix: a zero row, then the BCH parity rows."""
        code = self.code
        return np.vstack([np.zeros((1, self.n), dtype=bool), code.parity_matrix])

    def _subsampling(self, b: int) -> np.ndarray:
        """(C, n, b) subsampling matrices: the first b of _B_MAX columns drawn from random_state."""
        return stream(self._seed).integers(0, 2, size=(self.n_groups, self.n, _B_MAX), dtype=np.uint8)[:, :, :b].astype(bool)

    def _b(self, b: int | None) -> int:
        b = self.b if b is None else int(b)
        if b is None:
            raise ValueError("no b: pass b to SPEX(...) or design()/fit(), or give the Oracle a budget")
        if not 1 <= b <= _B_MAX:
            raise ValueError(f"b must be in [1, {_B_MAX}], got {b}")
        return b

    def design(self, b: int | None = None) -> np.ndarray:
        """(C (P+1) 2^b, n) bool masks, ordered (group, delay row, l); True = feature kept.

        Index i of l encodes l_j as bit (b-1-j) of i, so the design for b' < b is exactly the rows
        with i a multiple of 2^(b-b') built from the first b' columns of M: designs are nested.
        """
        b = self._b(b)
        M = self._subsampling(b).astype(np.float32)  # (C, n, b)
        ell = ((np.arange(1 << b)[:, None] >> np.arange(b - 1, -1, -1)) & 1).astype(np.float32)  # (2^b, b)
        base = (np.matmul(ell[None], M.transpose(0, 2, 1)).astype(np.int64) & 1).astype(bool)  # (C, 2^b, n)
        masks = base[:, None, :, :] ^ self.delays()[None, :, None, :]
        return masks.reshape(-1, self.n)

    def _bin_codes(self, b: int) -> np.ndarray:
        """(C, n+1) int: bin index contributed by each feature in each group (column n = 0 for padding)."""
        M = self._subsampling(b).astype(np.int64)
        weights = 1 << np.arange(b - 1, -1, -1)
        codes = M @ weights
        return np.concatenate([codes, np.zeros((self.n_groups, 1), dtype=np.int64)], axis=1)

    # ------------------------------------------------------------------ fit
    def fit(self, value_fn: ValueFunction | Oracle, b: int | None = None) -> Explanation:
        """Query the design (one batch through an Oracle), peel, refit; returns an Explanation.

        `queries_used` counts the distinct masks this call sent (what it added to the Oracle's count, as for
        every estimator: see spex_api.engine.estimator); diagnostics.rows_used counts the distinct
        design masks the fit rests on, answered now or earlier by a shared Oracle.
        """
        cpu0 = time.process_time()
        oracle = value_fn if isinstance(value_fn, Oracle) else Oracle(value_fn, self.n)
        if oracle.n != self.n:
            raise ValueError(f"oracle has n={oracle.n} but SPEX has n={self.n}")
        if b is None and self.b is None:
            if oracle.remaining is None:
                raise ValueError("no b: pass b, or give the Oracle a budget so b can be chosen")
            b = self.largest_b(self.n, oracle.remaining, self.max_order, self.n_groups)
            if b is None:
                raise ValueError(
                    f"budget too small for SPEX at n={self.n}, t={self.max_order}: {oracle.remaining} queries "
                    f"remain, the smallest design needs {self.n_queries(self.n, 1, self.max_order, self.n_groups)}"
                )
        b = self._b(b)
        masks = self.design(b)
        used0 = oracle.queries_used
        q0 = time.process_time()
        y = oracle(masks)
        query_cpu = time.process_time() - q0
        distinct = len(row_ids(masks)[0])

        C, P1, B = self.n_groups, self.code.P + 1, 1 << b
        raw = fwht(y.reshape(C, P1, B))  # (C, P+1, 2^b): 2^b * U
        U = np.ascontiguousarray((raw / B).transpose(0, 2, 1))  # (C, bins, P+1)
        codes = self._bin_codes(b)
        found, peel_info = self._peel(U, codes)
        keys = list(found)
        refit: SpexRefit | None = None
        refit_cv_mse = None
        if self.refit:
            fourier, refit, refit_cv_mse = self._refit(keys, raw, y.reshape(C, P1, B), codes, b, found)
        else:
            fourier = SparseFourier(self.n, keys, np.array(list(found.values()), dtype=float))
        cpu = time.process_time() - cpu0
        details = SpexDetails(b=b, t=self.max_order, P=self.code.P, n_groups=C, bins=C * B, design_size=len(masks),
                              decoder=self.decoder, **peel_info, decoded=len(keys), cpu_seconds_engine=cpu - query_cpu,
                              refit=refit)
        diagnostics = Diagnostics(method="spex", rows_used=distinct, n_coefficients=len(fourier), cv_mse=refit_cv_mse,
                                  cpu_seconds=cpu, query_cpu_seconds=query_cpu,
                                  params={"b": b, "t": self.max_order, "refit_z": None if refit is None else refit.z},
                                  details=details)
        return Explanation(
            fourier=fourier,
            method="spex",
            queries_used=oracle.queries_used - used0,
            diagnostics=diagnostics,
        )

    # ------------------------------------------------------------------ peeling
    def _peel(self, U: np.ndarray, codes: np.ndarray) -> tuple[dict[Key, float], dict[str, Any]]:
        """Singleton detection + BCH decoding over all bins at once, peeled across groups.

        Each round decodes every bin that changed, then re-fits all interactions found so far by
        least squares on the bins and subtracts that fit from the original bins.
        """
        code, t, n = self.code, self.max_order, self.n
        C, B, P1 = U.shape
        delay_words = _pack(np.vstack([self.delays().T, np.zeros((1, P1), dtype=bool)]))  # (n+1, words)
        scale = float(np.sqrt(np.mean(U**2))) if U.size else 0.0
        zero_tol = (1e-9 * scale) ** 2 * P1
        depth = 2 * t if self.chase_depth is None else int(self.chase_depth)
        U0, U = U, U.copy()
        index: dict[Key, int] = {}  # found interactions, in order of discovery
        key_bins = np.zeros((C, 0), dtype=np.int64)
        key_signs = np.zeros((0, P1))
        noise_pool: list[np.ndarray] = []  # per-entry residual variance of hard-decoded singletons
        dirty = np.ones((C, B), dtype=bool)
        rounds = idle = attempts = 0
        noise_var = 0.0
        # More terms than a quarter of the bin measurements cannot be told apart from noise.
        max_terms = C * B * P1 // 4
        while rounds < self.max_rounds and idle < self.patience and len(index) < max_terms:
            energy = np.einsum("cbp,cbp->cb", U, U)
            todo = dirty & (energy > zero_tol)
            dirty[:] = False
            if not todo.any():
                break
            rounds += 1
            gc, gb = np.nonzero(todo)
            cols = U[gc, gb]  # (W, P+1)
            attempts += len(cols)
            sign0 = np.where(cols[:, 0] < 0, -1.0, 1.0)
            rel_par = cols[:, 1:] * sign0[:, None]
            words = np.concatenate([np.zeros((len(cols), n), dtype=bool), rel_par < 0], axis=1)

            def check(rows: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, ...]:
                """Is the decoded k in this bin, and does rho * (-1)^(D k) explain the column?"""
                # Message positions (< n) are the interaction; parity positions were noise flips.
                msg = np.sort(np.where((pos >= 0) & (pos < n), pos, n), axis=1)[:, :t]
                good = (msg < n).sum(axis=1) == ((pos >= 0) & (pos < n)).sum(axis=1)
                good &= np.bitwise_xor.reduce(codes[gc[rows, None], msg], axis=1) == gb[rows]
                signs = np.zeros((len(rows), P1))
                rho = np.zeros(len(rows))
                resid = np.full(len(rows), np.inf)
                g = np.flatnonzero(good)
                if len(g):
                    bits = np.bitwise_xor.reduce(delay_words[msg[g]], axis=1)  # (G, words)
                    signs[g] = 1.0 - 2.0 * _unpack(bits, P1)
                    col = cols[rows[g]]
                    rho[g] = np.mean(signs[g] * col, axis=1)
                    resid[g] = np.sum((col - rho[g, None] * signs[g]) ** 2, axis=1)
                    good[g] = resid[g] < self.acceptance * np.maximum(np.sum(col**2, axis=1), 1e-300)
                return good, msg, signs, rho, resid

            def accept(rows: np.ndarray, pos: np.ndarray) -> np.ndarray:
                return check(rows, pos)[0]

            pos, ok = code.decode(words, accept=accept)
            if ok.any():
                noise_pool.append(check(np.flatnonzero(ok), pos[ok])[4] / P1)
            if noise_pool:
                # Noise per bin entry: singleton fit residuals, capped by the median bin energy
                # (once most bins are explained, what is left in them is the noise).
                noise_var = min(_noise_variance(noise_pool), float(np.median(energy)) / P1)
            fail = np.flatnonzero(~ok)
            if self.decoder == "soft" and len(fail):
                # A sign is flipped only where noise beat the coefficient, so |value| is then of the
                # order of the noise: positions well above it are never worth flipping.
                limit = 3.0 * np.sqrt(noise_var) if noise_pool else np.inf
                magnitude = np.abs(rel_par[fail])
                reliability = np.concatenate(
                    [np.full((len(fail), n), np.inf), np.where(magnitude < limit, magnitude, np.inf)], axis=1
                )
                patterns = self.chase_patterns or int(np.clip(_CHASE_WORK // len(fail), 64, min(2**depth - 1, 1023)))
                pos_f, ok_f = code.decode(
                    words[fail], reliability, depth, patterns, accept=lambda rows, p: check(fail[rows], p)[0]
                )
                pos = np.concatenate([pos, np.full((len(pos), pos_f.shape[1] - pos.shape[1]), -1)], axis=1)
                pos[fail], ok[fail] = pos_f, ok_f
            if not ok.any():
                idle += 1
                continue
            _, msg, signs, _, _ = check(np.flatnonzero(ok), pos[ok])
            msg, first = np.unique(msg, axis=0, return_index=True)
            fresh = np.array([tuple(int(v) for v in row if v < n) not in index for row in msg], dtype=bool)
            if not fresh.any():
                idle += 1
                continue
            idle = 0
            for row in msg[fresh]:
                index[tuple(int(v) for v in row if v < n)] = len(index)
            key_bins = np.concatenate([key_bins, np.bitwise_xor.reduce(codes[:, msg[fresh]], axis=2)], axis=1)
            key_signs = np.vstack([key_signs, signs[first[fresh]]])
            # Re-estimate every found coefficient jointly (least squares over all bins of all groups)
            # and peel the fitted model off the original bins: no error build-up from one-bin estimates.
            coef = _bin_least_squares(U0, key_bins, key_signs)
            model = np.zeros_like(U0)
            for c in range(C):
                np.add.at(model[c], key_bins[c], coef[:, None] * key_signs)
            new_U = U0 - model
            # Re-decode bins whose content moved by more than a fraction of the noise.
            dirty |= np.einsum("cbp,cbp->cb", new_U - U, new_U - U) > max(zero_tol, 0.01 * P1 * noise_var)
            U = new_U
        found = dict(zip(index, coef.tolist())) if index else {}
        noise = float(np.sqrt(noise_var)) if noise_pool else None
        return found, {"peeling_rounds": rounds, "decode_attempts": int(attempts), "bin_noise_sd": noise}

    # ------------------------------------------------------------------ refit
    def _refit(
        self,
        support: list[Key],
        raw: np.ndarray,
        y: np.ndarray,
        codes: np.ndarray,
        b: int,
        peeled: dict[Key, float],
    ) -> tuple[SparseFourier, SpexRefit, float]:
        """Least squares on support + {} + singletons from bin statistics, screened by CV'd |t| threshold.

        For candidate keys k, k' the Gram entry over all C (P+1) 2^b samples is
        2^b * #{c : same bin} * sum_p s_p(k) s_p(k'), and X^T y is read off the transformed blocks,
        so no (samples x candidates) matrix is ever built. Folds are sets of delay rows: held-out
        masks are genuinely new masks. The CV picks the significance threshold z a candidate's
        |t|-statistic must pass (z = 0 keeps every candidate).
        """
        n, t = self.n, self.max_order
        C, P1, B = raw.shape
        # All singletons join the candidates only while the design has well over one sample per
        # candidate; otherwise only those inside the recovered support do.
        all_singles = 2 * (1 + n + len(support)) <= C * P1 * B
        singles = range(n) if all_singles else sorted({i for k in support for i in k})
        keys: list[Key] = [()] + [(i,) for i in singles] + [k for k in support if len(k) > 1]
        if 2 * len(keys) > C * P1 * B:
            # Still too many for the samples: keep the constant and the largest peeled terms.
            ranked = sorted(keys[1:], key=lambda k: -abs(peeled.get(k, 0.0)))
            keys = [()] + ranked[: C * P1 * B // 2 - 1]
        K = len(keys)
        pad = np.full((K, t), n, dtype=np.int64)
        for j, k in enumerate(keys):
            pad[j, : len(k)] = k
        J = np.bitwise_xor.reduce(codes[:, pad], axis=2)  # (C, K) bins
        S = 1.0 - 2.0 * ((self.delays().astype(np.float32) @ incidence(keys, n).astype(np.float32)).astype(np.int64) & 1)
        S = S.T  # (K, P+1)
        # Pattern of same-bin pairs, counted over groups.
        pa, pb, pcount = _same_bin_pairs(J, B)
        pair_p = S[pa] * S[pb]  # (pairs, P+1) products per delay row
        # X^T y per delay row: sum_c raw[c, p, J[c, k]] * S[k, p]
        xty_p = np.zeros((K, P1))
        for c in range(C):
            xty_p += raw[c][:, J[c]].T * S
        yy_p = np.einsum("cpl,cpl->p", y, y)
        n_folds = min(5, P1)
        fold_of = np.arange(P1) % n_folds

        def gram(rows_mask: np.ndarray) -> sp.csr_matrix:
            vals = B * pcount * pair_p[:, rows_mask].sum(axis=1)
            return sp.csr_matrix((vals, (pa, pb)), shape=(K, K))

        G_all = gram(np.ones(P1, dtype=bool))
        r_all = xty_p.sum(axis=1)
        yy_all = float(yy_p.sum())
        n_samples = C * P1 * B
        y_scale = float(np.sqrt(max(yy_all / n_samples, 1e-300)))
        z_grid = (0.0, 2.0, 3.0, 5.0, np.inf)  # inf keeps the constant only

        def fit_screened(G: sp.csr_matrix, r: np.ndarray, yy: float, m: int) -> list[np.ndarray]:
            beta = _solve(G, r, np.arange(K))
            dof = max(m - K, 1)
            rss = max(yy - float(beta @ r), 0.0)
            sigma = max(np.sqrt(rss / dof), 1e-9 * y_scale)
            tstat = np.abs(beta) * np.sqrt(np.maximum(G.diagonal(), 1e-300)) / sigma
            out = []
            for z in z_grid:
                keep = np.flatnonzero((tstat > z) | (np.arange(K) == 0))
                coef = np.zeros(K)
                coef[keep] = _solve(G, r, keep)
                out.append(coef)
            return out

        cv_err = np.zeros(len(z_grid))
        for f in range(n_folds):
            held = fold_of == f
            G_tr, G_te = gram(~held), gram(held)
            r_tr, r_te = xty_p[:, ~held].sum(axis=1), xty_p[:, held].sum(axis=1)
            yy_tr, yy_te = float(yy_p[~held].sum()), float(yy_p[held].sum())
            for i, coef in enumerate(fit_screened(G_tr, r_tr, yy_tr, C * B * int((~held).sum()))):
                cv_err[i] += yy_te - 2 * coef @ r_te + coef @ (G_te @ coef)
        best = int(np.argmin(cv_err))
        coef = fit_screened(G_all, r_all, yy_all, n_samples)[best]
        keep = np.flatnonzero(coef != 0)
        keep = keep[(np.abs(coef[keep]) > 1e-12 * np.abs(coef).max(initial=0.0)) | (keep == 0)]
        fourier = SparseFourier(n, [keys[i] for i in keep], coef[keep])
        # CV error of the peeled (un-refit) coefficients, for comparison in diagnostics.
        peel_coef = np.zeros(K)
        index = {k: i for i, k in enumerate(keys)}
        for k, v in peeled.items():
            peel_coef[index[k]] += v
        peel_err = yy_all - 2 * peel_coef @ r_all + peel_coef @ (G_all @ peel_coef)
        info = SpexRefit(candidates=K, all_singletons=all_singles, z=z_grid[best],
                         cv_mse_by_z={str(z): float(e / n_samples) for z, e in zip(z_grid, cv_err)},
                         peeled_train_mse=float(peel_err / n_samples), kept=int(len(keep)))
        return fourier, info, float(cv_err[best] / n_samples)


def _noise_variance(pool: list[np.ndarray]) -> float:
    """Per-entry noise variance of the bins, from singleton fit residuals.

    A lower quartile rather than the median: early rounds accept some wrong decodes whose residuals
    are large, and the lower quartile of a chi-square with ~P dof sits only ~15% under its mean.
    """
    return float(np.quantile(np.concatenate(pool), 0.25))


def _same_bin_pairs(J: np.ndarray, B: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (a, b) of keys sharing a bin in at least one group, and in how many groups (J: (C, K) bins)."""
    C, K = J.shape
    rows = np.repeat(np.arange(K), C)
    Z = sp.csr_matrix((np.ones(K * C), (rows, (J.T + (np.arange(C) * B)[None, :]).reshape(-1))), shape=(K, C * B))
    pattern = (Z @ Z.T).tocoo()
    return pattern.row, pattern.col, pattern.data


def _bin_least_squares(U: np.ndarray, J: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Coefficients minimising sum over groups, bins, rows of (U - sum_k beta_k S_k [bin of k])^2."""
    C, B, _ = U.shape
    pa, pb, count = _same_bin_pairs(J, B)
    G = sp.csr_matrix((count * np.einsum("ip,ip->i", S[pa], S[pb]), (pa, pb)), shape=(len(S), len(S)))
    r = sum(np.einsum("kp,kp->k", U[c, J[c]], S) for c in range(C))
    return _solve(G, r, np.arange(len(S)))


def _pack(bits: np.ndarray) -> np.ndarray:
    """(R, L) bool -> (R, ceil(L/64)) uint64 bitsets (bit j of word w = column 64 w + j)."""
    R, L = bits.shape
    padded = np.zeros((R, -(-L // 64) * 64), dtype=bool)
    padded[:, :L] = bits
    return np.packbits(padded.reshape(R, -1, 64), axis=2, bitorder="little").view(np.uint64).reshape(R, -1)


def _unpack(words: np.ndarray, L: int) -> np.ndarray:
    """Inverse of _pack: (R, words) uint64 -> (R, L) 0/1 float."""
    R = len(words)
    bits = np.unpackbits(np.ascontiguousarray(words).view(np.uint8).reshape(R, -1), axis=1, bitorder="little")
    return bits[:, :L].astype(float)


def _solve(G: sp.csr_matrix, r: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Least squares on the kept columns: Jacobi-preconditioned CG on the (near-diagonal) Gram system."""
    Gk = G[keep][:, keep]
    diag = Gk.diagonal()
    inv = np.where(diag > 0, 1.0 / np.maximum(diag, 1e-300), 0.0)
    precond = sp.diags(inv)
    sol, _ = cg(Gk, r[keep], M=precond, rtol=1e-12, atol=0.0, maxiter=500)
    return sol
