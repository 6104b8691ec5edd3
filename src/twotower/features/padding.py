"""Ragged lists (Arrow list arrays) to padded ``[B, L]`` int64 matrices, vectorised."""
from __future__ import annotations

import numpy as np


def pad_ragged(values: np.ndarray, lengths: np.ndarray, max_len: int,
               keep: str = "first") -> np.ndarray:
    """Pack a flat array split into rows of ``lengths`` into ``[B, max_len]`` (0 = padding).

    ``keep="last"`` keeps each row's last ``max_len`` values (the most recent of a history),
    ``"first"`` its first ones (the start of a text).
    """
    rows = len(lengths)
    out = np.zeros((rows, max_len), dtype=np.int64)
    if len(values) == 0:
        return out
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    row = np.repeat(np.arange(rows), lengths)
    pos = np.arange(len(values)) - np.repeat(starts, lengths)
    if keep == "last":
        pos = pos - np.repeat(np.maximum(lengths - max_len, 0), lengths)
    ok = (pos >= 0) & (pos < max_len)
    out[row[ok], pos[ok]] = values[ok]
    return out
