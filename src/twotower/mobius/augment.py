"""Data augmentation of MOBIUS (Fan et al., KDD 2019, Algorithm 1): deduplicate a batch's queries
(with their users) and ads, then cross join them (m queries x n ads -> m*n pairs), vectorised."""
from __future__ import annotations

import torch

from twotower.types import Features


def _row_codes(features: Features) -> torch.Tensor:
    """[B, C] int64 matrix whose rows are equal exactly when the examples' features are equal."""
    cols = []
    for name in sorted(features):
        x = features[name]
        if x.is_floating_point():
            x = x.float().view(torch.int32)  # compare floats bit for bit
        cols.append(x.reshape(x.shape[0], -1).long())
    return torch.cat(cols, dim=1)


#: odd 64-bit multipliers of the row hash (fixed: the grouping must not depend on a global seed)
_HASH = torch.randint(-(1 << 62), 1 << 62, (4096,), generator=torch.Generator().manual_seed(17)) | 1


def dedup_rows(features: Features) -> tuple[torch.Tensor, torch.Tensor]:
    """(first [m], inverse [B]): row ``first[j]`` represents distinct example j; ``inverse[b]`` is
    the distinct index of row b. Rows are compared over every feature of the side.

    Rows are grouped by a 64-bit hash of their codes (one multiply-add and a 1-d unique, several
    times faster than a lexicographic ``unique(dim=0)`` over the [B, C] codes) and the grouping is
    then checked against the codes themselves, so a hash collision falls back to the exact sort."""
    codes = _row_codes(features)
    if codes.shape[1] <= len(_HASH):
        h = (codes * _HASH[:codes.shape[1]].to(codes.device)).sum(1)  # wraps mod 2^64
        _, inverse = torch.unique(h, return_inverse=True)
        first = first_occurrence(inverse)
        if torch.equal(codes[first[inverse]], codes):
            return first, inverse
    _, inverse = torch.unique(codes, dim=0, return_inverse=True)
    return first_occurrence(inverse), inverse


def dedup_ids(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Same as ``dedup_rows`` for a 1-d id tensor (the encoded item ids)."""
    _, inverse = torch.unique(ids, return_inverse=True)
    return first_occurrence(inverse), inverse


def first_occurrence(inverse: torch.Tensor) -> torch.Tensor:
    """[m] first position of each group of ``inverse`` ([B] ints in [0, m))."""
    m = int(inverse.max()) + 1 if inverse.numel() else 0
    pos = torch.arange(inverse.numel(), device=inverse.device)
    first = torch.full((m,), inverse.numel(), dtype=torch.long, device=inverse.device)
    return first.scatter_reduce(0, inverse, pos, reduce="amin")


def cross_join(m: int, n: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(query index [m*n], ad index [m*n]) of every pair of the m x n cross join, row-major:
    pair p = (p // n, p % n)."""
    qi = torch.arange(m, device=device).repeat_interleave(n)
    ai = torch.arange(n, device=device).repeat(m)
    return qi, ai


def observed_mask(q_inverse: torch.Tensor, a_inverse: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """bool[m, n]: True where the (query, ad) pair occurs among the batch's impressions."""
    mask = torch.zeros(m * n, dtype=torch.bool, device=q_inverse.device)
    mask[q_inverse * n + a_inverse] = True
    return mask.reshape(m, n)
