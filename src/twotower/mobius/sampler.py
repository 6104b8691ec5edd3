"""Bad-case sampling of MOBIUS (Fan et al., KDD 2019): among low-relevance cross-join pairs, draw
bad cases with probability rising with the student's predicted CTR — a sampler, not a second hard
threshold."""
from __future__ import annotations

import math
from typing import Callable

import torch


def sampling_weights(ctr: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """ctr^(1/T): T = 1 is CTR-proportional, T < 1 favours high CTR more, T > 1 flattens."""
    return ctr.clamp_min(1e-12).pow(1.0 / temperature)


def sample_bad_cases(ctr: torch.Tensor, cap: int, temperature: float = 1.0,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Positions (into ``ctr`` [P]) of at most ``cap`` distinct pairs drawn without replacement with
    probability proportional to ``sampling_weights(ctr, temperature)``."""
    p = ctr.numel()
    if p == 0 or cap <= 0:
        return torch.zeros(0, dtype=torch.long, device=ctr.device)
    return sampling_keys(ctr, temperature, generator).topk(min(cap, p)).indices.to(ctr.device)


def sampling_keys(ctr: torch.Tensor, temperature: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """[P] Efraimidis-Spirakis keys log(u) / w: the top k keys are a weighted sample without
    replacement of k positions, with probability proportional to ``sampling_weights``."""
    w = sampling_weights(ctr.float().cpu(), temperature)
    u = torch.rand(ctr.numel(), generator=generator).clamp_min(1e-12)
    return u.log_() / w


def sample_bad_cases_lazily(ctr: torch.Tensor, excluded: torch.Tensor, cap: int,
                            is_low: Callable[[torch.Tensor], torch.Tensor],
                            temperature: float = 1.0, generator: torch.Generator | None = None
                            ) -> tuple[torch.Tensor, int]:
    """(positions [<= cap], pairs the teacher scored): ``sample_bad_cases`` restricted to the
    pairs that ``is_low`` accepts and ``excluded`` [P] does not mark, asking ``is_low`` only
    about the pairs it needs.

    The keys of a subset are the subset's own Efraimidis-Spirakis keys, so walking all pairs in
    key order and keeping the first ``cap`` low-relevance ones draws exactly the sample that
    scoring every pair first and sampling among the low ones would — but the teacher sees about
    cap / (low share) pairs instead of the whole cross join (``is_low(positions) -> bool``)."""
    keys = sampling_keys(ctr, temperature, generator).masked_fill_(excluded.cpu(), -math.inf)
    available = int(keys.numel() - excluded.sum())
    if available <= 0 or cap <= 0:
        return torch.zeros(0, dtype=torch.long, device=ctr.device), 0
    want = min(available, 2 * cap)
    while True:
        top = largest_keys(keys, want)  # a prefix of the key order, in key order
        low = is_low(top).cpu()
        found = int(low.sum())
        if found >= cap or len(top) >= available:
            return top[low][:cap].to(ctr.device), len(top)
        # the low share seen so far sizes the next look, with a margin, at least doubling
        want = min(available, max(2 * len(top), math.ceil(1.25 * len(top) * cap / max(found, 1))))


def largest_keys(keys: torch.Tensor, k: int, sample: int = 4096) -> torch.Tensor:
    """Positions of at least the ``k`` largest ``keys`` (every key above some level), sorted by
    key, largest first. For k much smaller than the keys: the level is read off a strided sample
    of the keys (random themselves), one comparison pass keeps the keys above it and only those
    are sorted — several times faster than ``topk`` with a large k; ``topk`` when it would not
    find k, or when k is a large share of the keys."""
    p = keys.numel()
    if k * 16 < p and p > 4 * sample:
        part = keys[:: p // sample]
        level = part.kthvalue(max(1, len(part) - math.ceil(1.5 * k * len(part) / p))).values
        if torch.isfinite(level):
            cand = (keys > level).nonzero().squeeze(1)
            if len(cand) >= k:
                return cand[keys[cand].argsort(descending=True)]
    return keys.topk(min(k, p)).indices


def sample_uniform(p: int, cap: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Ablation (the paper's Table 1 row b): ``cap`` pairs uniformly, ignoring relevance and CTR."""
    return torch.randperm(p, generator=generator)[: min(cap, p)]
