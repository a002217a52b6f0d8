"""Binary primitive narrow-sense BCH codes shortened to n message bits, with a vectorised decoder.

SPEX uses the parity rows of such a code as delay rows: an interaction k of degree <= t shows up
as <= t errors in the message part of the word [0^n | parity(k)], so decoding that word returns k.
Everything here works on many words at once: syndromes are one GF(2) matrix product,
Berlekamp-Massey runs across words in lock-step over GF(2^m) log/antilog tables, a cheap
splitting test (does the locator divide x^(2^m) - x?) discards hopeless locators before the
Chien search, and Chase soft decoding flips the least reliable positions, cheapest patterns first.

Word layout everywhere: [message bits 0..n-1 | parity bits 0..P-1].
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np

# Primitive polynomials over GF(2), bit i = coefficient of x^i (checked for primitivity on use).
_PRIMITIVE_POLY = {
    2: 0b111, 3: 0b1011, 4: 0b10011, 5: 0b100101, 6: 0b1000011, 7: 0b10001001, 8: 0b100011101,
    9: 0x211, 10: 0x409, 11: 0x805, 12: 0x1053, 13: 0x201B, 14: 0x4443, 15: 0x8003, 16: 0x1100B,
    17: 0x20009, 18: 0x40081, 19: 0x80027, 20: 0x100009,
}


def _cyclotomic_union(m: int, t: int) -> list[int]:
    """Exponents e such that alpha^e is a root of the narrow-sense generator (roots alpha^1..alpha^2t)."""
    order = (1 << m) - 1
    roots: set[int] = set()
    for j in range(1, 2 * t + 1):
        e = j % order
        while e not in roots:
            roots.add(e)
            e = (2 * e) % order
    return sorted(roots)


def _code_size(n: int, t: int) -> tuple[int, int]:
    """Smallest field degree m whose length-(2^m - 1) BCH code carries >= n message bits, and its P."""
    if n < 1:
        raise ValueError(f"message length n must be >= 1, got {n}")
    if t < 1:
        raise ValueError(f"error-correcting capability t must be >= 1, got {t}")
    for m in range(2, max(_PRIMITIVE_POLY) + 1):
        length = (1 << m) - 1
        if 2 * t + 1 > length:
            continue
        parity = len(_cyclotomic_union(m, t))
        if length - parity >= n:
            return m, parity
    raise ValueError(f"no BCH code with m <= {max(_PRIMITIVE_POLY)} has {n} message bits at t={t}")


@lru_cache(maxsize=None)
def bch_parity_length(n: int, t: int) -> int:
    """Number of parity bits P of the shortest primitive narrow-sense BCH code (distance 2t+1) with >= n message bits."""
    return _code_size(int(n), int(t))[1]


class GF2m:
    """GF(2^m) arithmetic on integer arrays through log/antilog tables (0 handled by a sentinel)."""

    def __init__(self, m: int) -> None:
        if m not in _PRIMITIVE_POLY:
            raise ValueError(f"unsupported field degree m={m}")
        self.m = m
        self.order = (1 << m) - 1
        poly = _PRIMITIVE_POLY[m]
        exp = np.zeros(4 * self.order + 2, dtype=np.int32)  # indices >= 2*order map to 0
        value = 1
        for i in range(self.order):
            exp[i] = value
            value <<= 1
            if value >> m:
                value ^= poly
        if value != 1 or len(set(exp[: self.order].tolist())) != self.order:
            raise AssertionError(f"polynomial {poly:#x} is not primitive for m={m}")
        exp[self.order : 2 * self.order] = exp[: self.order]
        log = np.zeros(1 << m, dtype=np.int32)
        log[exp[: self.order]] = np.arange(self.order)
        log[0] = 2 * self.order  # sentinel: any sum involving it lands in the zero region of exp
        self.exp, self.log = exp, log

    def mul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self.exp[self.log[a] + self.log[b]]

    def div(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """a / b for b != 0 (0 where a == 0: the index then lands in the zero region)."""
        return self.exp[self.log[a] - self.log[b] + self.order]

    def square(self, a: np.ndarray) -> np.ndarray:
        return self.exp[2 * self.log[a]]


class BCHCode:
    """Systematic binary BCH code (designed distance 2t+1) shortened to n message bits.

    `parity_matrix` is the (P, n) GF(2) matrix with parity(k) = parity_matrix @ k mod 2; these are
    the SPEX delay rows. `decode` corrects up to t errors per word, and with Chase soft decoding
    also words whose extra errors sit on the least reliable positions.
    """

    def __init__(self, n: int, t: int) -> None:
        self.n, self.t = int(n), int(t)
        self.m, self.P = _code_size(self.n, self.t)
        self.gf = GF2m(self.m)
        self.length = self.n + self.P
        gen = self._generator()
        self.generator = gen
        self.parity_matrix = self._parity_matrix(gen)
        # Exponent of each word position: message i -> P + i, parity p -> p.
        self._exponent = np.concatenate([np.arange(self.P, self.P + self.n), np.arange(self.P)])
        self._position_of_exponent = np.empty(self.length, dtype=np.int64)
        self._position_of_exponent[self._exponent] = np.arange(self.length)
        # Odd syndromes S_1, S_3, ..., S_{2t-1} as bits: row = word position, cols = (syndrome, bit).
        odd = np.arange(1, 2 * self.t, 2)
        vals = self.gf.exp[(self._exponent[:, None] * odd[None, :]) % self.gf.order]
        bits = (vals[:, :, None] >> np.arange(self.m)) & 1
        self.syndrome_matrix = bits.reshape(self.length, self.t * self.m).astype(np.float32)
        self._bit_weights = (1 << np.arange(self.m)).astype(np.int64)
        self._position_syndromes = vals  # (n+P, t): odd syndromes of a single error at each position

    def _generator(self) -> np.ndarray:
        """Coefficients (low degree first, length P+1) of prod (x - alpha^e) over the root set."""
        gf = self.gf
        poly = np.array([1], dtype=np.int64)
        for e in _cyclotomic_union(self.m, self.t):
            root = gf.exp[e]
            shifted = np.concatenate([[0], poly])
            scaled = np.concatenate([gf.mul(poly, np.full(len(poly), root)), [0]])
            poly = shifted ^ scaled
        if poly.max() > 1 or len(poly) != self.P + 1:
            raise AssertionError("generator polynomial is not binary")
        return poly.astype(bool)

    def _parity_matrix(self, gen: np.ndarray) -> np.ndarray:
        """Column i = x^(P+i) mod g(x): the parity bits of the systematic codeword of message e_i."""
        low = gen[: self.P].copy()
        out = np.empty((self.P, self.n), dtype=bool)
        reg = low.copy()
        for i in range(self.n):
            out[:, i] = reg
            top = reg[-1]
            reg = np.concatenate([[False], reg[:-1]])
            if top:
                reg ^= low
        return out

    # ------------------------------------------------------------------ encoding
    def parity(self, messages: np.ndarray) -> np.ndarray:
        """(W, P) parity bits of (W, n) messages."""
        msgs = np.asarray(messages, dtype=np.float32).reshape(-1, self.n)
        return (msgs @ self.parity_matrix.T.astype(np.float32)).astype(np.int64) % 2 == 1

    def encode(self, messages: np.ndarray) -> np.ndarray:
        """(W, n+P) systematic codewords [message | parity]."""
        msgs = np.asarray(messages, dtype=bool).reshape(-1, self.n)
        return np.concatenate([msgs, self.parity(msgs)], axis=1)

    # ------------------------------------------------------------------ decoding
    def syndrome_bits(self, words: np.ndarray) -> np.ndarray:
        """(W, t*m) bits of the odd syndromes S_1, S_3, ... of (W, n+P) received words."""
        w = np.asarray(words, dtype=bool).reshape(-1, self.length)
        used = np.flatnonzero(w.any(axis=0))  # SPEX words are zero on the whole message part
        return (w[:, used].astype(np.float32) @ self.syndrome_matrix[used]).astype(np.int64) & 1

    def decode(
        self,
        words: np.ndarray,
        reliability: np.ndarray | None = None,
        chase_depth: int = 0,
        chase_patterns: int | None = None,
        accept: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Error positions of many received words at once.

        words: (W, n+P) bool. Hard decoding corrects up to t errors. With `reliability` (same shape,
        larger = more trusted; np.inf = never flip) and chase_depth > 0, a word that fails is retried
        with flips of its chase_depth least reliable positions, cheapest patterns (smallest summed
        reliability) first, at most `chase_patterns` of them (default all 2^depth - 1).
        `accept(rows, positions) -> bool mask` may veto candidate corrections (rows index `words`);
        a vetoed word counts as failed and goes on to the next Chase pattern.
        Returns (positions (W, width) int64 sorted, -1 padded; ok (W,) bool), width = t + chase_depth
        with Chase, t without.
        """
        words = np.asarray(words, dtype=bool).reshape(-1, self.length)
        chase = reliability is not None and chase_depth > 0
        base = self.syndrome_bits(words)
        out = np.full((len(words), self.t + (chase_depth if chase else 0)), -1, dtype=np.int64)
        pos, ok = self._decode_syndromes(base)
        if accept is not None and ok.any():
            rows = np.flatnonzero(ok)
            ok[rows] = np.asarray(accept(rows, pos[rows]), dtype=bool)
        out[ok, : self.t] = pos[ok]
        if not chase or ok.all():
            return out, ok
        rel = np.asarray(reliability, dtype=float).reshape(words.shape)
        fail = np.flatnonzero(~ok)
        depth = int(min(chase_depth, np.isfinite(rel[fail]).sum(axis=1).max(initial=0)))
        if depth == 0:
            return out, ok
        sel = np.argsort(rel[fail], axis=1, kind="stable")[:, :depth]  # (F, depth) least reliable
        rel_sel = np.take_along_axis(rel[fail], sel, axis=1)
        usable = np.isfinite(rel_sel)
        patterns = ((np.arange(1, 1 << depth)[:, None] >> np.arange(depth)) & 1).astype(bool)
        cost = np.where(usable, rel_sel, 1e300) @ patterns.T.astype(float)
        n_pat = len(patterns) if chase_patterns is None else min(int(chase_patterns), len(patterns))
        order = np.argsort(cost, axis=1, kind="stable")[:, :n_pat]
        # Patterns touching an unusable (np.inf) position sort last and repeat cheaper ones: stop before them.
        n_valid = np.minimum((1 << usable.sum(axis=1)) - 1, n_pat)
        base_odd = self._pack_syndromes(base[fail])
        contrib = self._position_syndromes[sel]  # (F, depth, t): odd syndromes of each flippable position
        active = np.flatnonzero(n_valid > 0)
        start, step = 0, 1
        while start < n_pat and len(active):
            stop = min(n_pat, start + step)
            q = stop - start
            pats = patterns[order[active, start:stop]] & usable[active][:, None, :]  # (Fa, q, depth)
            trial = np.repeat(base_odd[active][:, None, :], q, axis=1)
            for d in range(depth):
                trial ^= np.where(pats[:, :, d : d + 1], contrib[active, None, d, :], 0)
            tpos, tok = self._decode_odd(trial.reshape(-1, self.t))
            tok = tok.reshape(len(active), q)
            tpos = tpos.reshape(len(active), q, self.t)
            ia, iq = np.nonzero(tok)
            full = np.zeros((0, out.shape[1]), dtype=np.int64)
            if len(ia):
                flipped = np.where(pats[ia, iq], sel[active[ia]], -1)
                full = _symmetric_difference(np.concatenate([tpos[ia, iq], flipped], axis=1))
                full = np.pad(full, ((0, 0), (0, out.shape[1] - full.shape[1])), constant_values=-1)
                if accept is not None:
                    good = np.asarray(accept(fail[active[ia]], full), dtype=bool)
                    tok[ia[~good], iq[~good]] = False
            hit = tok.any(axis=1)
            if hit.any():
                first = tok.argmax(axis=1)
                lookup = np.full((len(active), q), -1)
                lookup[ia, iq] = np.arange(len(ia))
                words_hit = fail[active[hit]]
                out[words_hit] = full[lookup[hit, first[hit]]]
                ok[words_hit] = True
            active = active[~hit]
            start, step = stop, step * 2
            active = active[n_valid[active] > start]
        return out, ok

    def _pack_syndromes(self, bits: np.ndarray) -> np.ndarray:
        """(W, t*m) syndrome bits -> (W, t) GF(2^m) elements S_1, S_3, ..."""
        return (bits.reshape(len(bits), self.t, self.m) @ self._bit_weights).astype(np.int32)

    def _decode_syndromes(self, bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hard-decode from odd-syndrome bits: (positions (W, t) -1 padded, ok (W,))."""
        return self._decode_odd(self._pack_syndromes(bits))

    def _decode_odd(self, odd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hard-decode from odd syndromes (W, t) as field elements."""
        gf, t = self.gf, self.t
        W = len(odd)
        synd = np.zeros((W, 2 * t), dtype=np.int32)  # synd[:, j-1] = S_j
        for j in range(1, 2 * t + 1):
            synd[:, j - 1] = odd[:, (j - 1) // 2] if j % 2 else gf.square(synd[:, j // 2 - 1])
        locator, L = self._berlekamp_massey(synd)
        positions = np.full((W, t), -1, dtype=np.int64)
        ok = L == 0  # zero syndrome: no errors
        deg_ok = (L <= t) & (L > 0)
        cand = np.flatnonzero(deg_ok)
        if len(cand):
            exact = locator[cand, L[cand]] != 0
            exact &= ~np.any(np.where(np.arange(locator.shape[1])[None, :] > L[cand, None], locator[cand], 0), axis=1)
            cand = cand[exact]
        if len(cand):
            cand = cand[self._splits(locator[cand], L[cand])]
        if len(cand):
            roots, count = self._chien(locator[cand], L[cand])
            good = count == L[cand]
            positions[cand[good]] = roots[good]
            ok[cand[good]] = True
        return positions, ok

    def _berlekamp_massey(self, synd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Error-locator polynomials (W, 2t+1), low degree first, and their lengths L, for all words."""
        gf = self.gf
        W, T2 = synd.shape
        C = np.zeros((W, T2 + 1), dtype=np.int32)
        C[:, 0] = 1
        B = C.copy()
        L = np.zeros(W, dtype=np.int64)
        shift = np.ones(W, dtype=np.int64)
        b = np.ones(W, dtype=np.int32)
        cols = np.arange(T2 + 1)[None, :]
        for r in range(T2):
            if r % 2:
                # Binary codes: S_2j = S_j^2 makes every even-step discrepancy vanish.
                shift += 1
                continue
            d = synd[:, r].copy()
            if r:
                d ^= np.bitwise_xor.reduce(gf.mul(C[:, 1 : r + 1], synd[:, r - 1 :: -1]), axis=1)
            nz = d != 0
            if not nz.any():
                shift += 1
                continue
            idx = cols - shift[:, None]
            Bs = np.where(idx >= 0, np.take_along_axis(B, np.clip(idx, 0, T2), axis=1), 0)
            coef = gf.div(d, b)
            newC = C ^ gf.mul(coef[:, None], Bs)
            upd = nz & (2 * L <= r)
            B = np.where(upd[:, None], C, B)
            b = np.where(upd, d, b)
            L = np.where(upd, r + 1 - L, L)
            shift = np.where(upd, 1, shift + 1)
            C = np.where(nz[:, None], newC, C)
        return C, L

    def _splits(self, locator: np.ndarray, L: np.ndarray) -> np.ndarray:
        """True where the locator has L distinct nonzero roots in GF(2^m): x^(2^m) = x mod its reversal."""
        gf = self.gf
        keep = np.zeros(len(L), dtype=bool)
        for deg in np.unique(L):
            rows = np.flatnonzero(L == deg)
            if deg == 1:
                keep[rows] = True
                continue
            # Reversed locator is monic (constant term of the locator is 1): x^deg = sum_i rev[i] x^i.
            rev = locator[rows, deg::-1][:, :deg]  # rev[i] = C[deg - i], i < deg
            log_rev = gf.log[rev]
            r = np.zeros((len(rows), deg), dtype=np.int32)
            r[:, 1] = 1
            for _ in range(self.m):
                sq = np.zeros((len(rows), 2 * deg - 1), dtype=np.int32)
                sq[:, ::2] = gf.square(r)
                for top in range(2 * deg - 2, deg - 1, -1):
                    sq[:, top - deg : top] ^= gf.exp[gf.log[sq[:, top : top + 1]] + log_rev]
                r = sq[:, :deg]
            target = np.zeros(deg, dtype=np.int32)
            target[1] = 1
            keep[rows] = (r == target).all(axis=1)
        return keep

    def _chien(self, locator: np.ndarray, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Roots of the locators among the code's exponents: (word positions (W, t) -1 padded, root count)."""
        gf, t = self.gf, self.t
        W = len(L)
        e = np.arange(self.length)
        logc = gf.log[locator[:, : t + 1]]  # (W, t+1); sentinel for zero coefficients
        roots = np.full((W, t), -1, dtype=np.int64)
        count = np.zeros(W, dtype=np.int64)
        chunk = max(1, 2_000_000 // self.length)
        for s in range(0, W, chunk):
            lc = logc[s : s + chunk]
            acc = np.zeros((len(lc), self.length), dtype=np.int32)
            for i in range(t + 1):
                # Lambda(alpha^-e) = sum_i C_i alpha^(-e i)
                expo = np.where(lc[:, i : i + 1] >= 2 * gf.order, 2 * gf.order, (lc[:, i : i + 1] - e[None, :] * i) % gf.order)
                acc ^= gf.exp[expo]
            is_root = acc == 0
            count[s : s + chunk] = is_root.sum(axis=1)
            w, expo = np.nonzero(is_root)  # row-major: grouped by word
            rank = np.arange(len(w)) - np.searchsorted(w, w)
            keep = rank < t
            roots[s + w[keep], rank[keep]] = self._position_of_exponent[expo[keep]]
        roots = np.sort(np.where(roots < 0, np.iinfo(np.int64).max, roots), axis=1)
        return np.where(roots == np.iinfo(np.int64).max, -1, roots), count


def _symmetric_difference(pos: np.ndarray) -> np.ndarray:
    """Row-wise: positions appearing twice cancel; result sorted with -1 padding at the end."""
    big = np.iinfo(np.int64).max
    a = np.sort(np.where(pos < 0, big, pos), axis=1)
    dup = (a[:, 1:] == a[:, :-1]) & (a[:, 1:] != big)
    kill = np.zeros(a.shape, dtype=bool)
    kill[:, 1:] |= dup
    kill[:, :-1] |= dup
    a = np.sort(np.where(kill, big, a), axis=1)
    return np.where(a == big, -1, a)


@lru_cache(maxsize=32)
def bch_code(n: int, t: int) -> BCHCode:
    """Cached BCH code for message length n and capability t (construction is deterministic)."""
    return BCHCode(n, t)
