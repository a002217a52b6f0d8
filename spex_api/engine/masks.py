"""Masks: validation, row packing and distinct rows, in one place (a leaf module: numpy only).

A mask array is (N, n) bool, True = feature kept. Every layer that takes masks from a caller checks them
with `as_masks` (raising its own error type), and every de-duplication packs rows with `pack_rows`.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def check_n(n: Any) -> None:
    """Raise a ValueError unless `n` (the number of features) is a positive integer."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")


def as_masks(masks: Any, n: int, error: type[Exception] = ValueError) -> np.ndarray:
    """`masks` as a (N, n) bool array (a 1-d mask is one row), or `error` saying what is wrong."""
    masks = np.asarray(masks)
    if masks.ndim == 1:
        masks = masks[None, :]
    if masks.ndim != 2 or masks.shape[1] != n:
        raise error(f"masks must have shape (N, {n}): one column per feature, got shape {masks.shape}")
    if masks.dtype != bool:
        if not np.isin(masks, (0, 1)).all():
            raise error("masks must be boolean or 0/1")
        masks = masks.astype(bool)
    return masks


def as_answers(masks: Any, y: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, n) bool masks and their N scores as floats, for a fit on answers already paid for."""
    masks = as_masks(masks, n)
    y = np.asarray(y, dtype=float).reshape(-1)
    if len(y) != len(masks):
        raise ValueError(f"{len(masks)} masks but {len(y)} scores")
    return masks, y


def pack_rows(masks: np.ndarray) -> np.ndarray:
    """Rows of a bool mask array as (N, ceil(n / 64)) uint64 bit-words: a compact key per row."""
    packed = np.packbits(masks, axis=1)
    pad = (-packed.shape[1]) % 8
    if pad:
        packed = np.pad(packed, ((0, 0), (0, pad)))
    return np.ascontiguousarray(packed).view(np.uint64)


def row_ids(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, ids): the row where each distinct mask first appears, and each row's distinct-mask id."""
    _, first, ids = np.unique(pack_rows(masks), axis=0, return_index=True, return_inverse=True)
    return first, ids.reshape(-1)


def distinct_rows(masks: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each distinct row, in their original order."""
    return np.sort(row_ids(masks)[0])
