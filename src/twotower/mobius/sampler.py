"""Bad-case sampling of MOBIUS (Fan et al., KDD 2019): among low-relevance cross-join pairs, draw
bad cases with probability rising with the student's predicted CTR — a sampler, not a second hard
threshold."""
from __future__ import annotations

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
    w = sampling_weights(ctr.float().cpu(), temperature)
    k = min(cap, p)
    # Efraimidis-Spirakis: keys u^(1/w), top-k == weighted sampling without replacement
    u = torch.rand(p, generator=generator).clamp_min(1e-12)
    keys = u.log() / w
    return keys.topk(k).indices.to(ctr.device)


def sample_uniform(p: int, cap: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Ablation (the paper's Table 1 row b): ``cap`` pairs uniformly, ignoring relevance and CTR."""
    return torch.randperm(p, generator=generator)[: min(cap, p)]
