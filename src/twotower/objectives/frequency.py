"""Streaming item-frequency estimation for the log-Q (sampling-bias) correction.

The in-batch softmax samples its negatives with the training stream itself, so popular items are
over-penalised as negatives. The correction subtracts ``log q(y)`` from each candidate's logit,
where ``q(y)`` is the expected number of times ``y`` appears in a batch. This module estimates it
online, in fixed memory, without a vocabulary.
"""
from __future__ import annotations

import torch

#: Mersenne prime 2^31 - 1 of the universal hash family ``h(x) = (a * x + b) mod P``. Ids are
#: reduced mod P first so that ``a * x + b`` (a, b < P) stays below 2^62: no int64 overflow.
_PRIME = 2**31 - 1


class FrequencyEstimator(torch.nn.Module):
    """Streaming estimate of how often each item appears per training step (batch).

    Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations" (RecSys 2019).

    Algorithm 2 keeps, per hash bucket, ``A`` (the last step the bucket was seen) and ``B`` (a
    moving average, rate ``alpha``, of the gap in steps between two sightings); the estimate is
    ``p = 1 / B``, the expected occurrences per step. Algorithm 3 uses ``num_hashes``
    independent hash functions, each with its own ``A_i, B_i`` of ``num_buckets`` entries, and
    returns ``p = 1 / max_i B_i[h_i(y)]``: collisions only make a gap shorter, so the largest gap
    comes from the least polluted bucket.

    ``A`` starts at step 0 and ``B`` at ``initial_gap`` (default 1.0): a bucket never seen gives
    ``p = 1``, i.e. ``log q = 0``, which is exactly "no correction" until the item is observed.
    ``A`` (int64), ``B`` (float64) and the hash coefficients are buffers, so they follow
    ``state_dict`` and ``.to(device)``.
    """

    def __init__(
        self,
        num_buckets: int = 2**20,
        num_hashes: int = 1,
        alpha: float = 0.01,
        initial_gap: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_buckets < 1 or num_hashes < 1:
            raise ValueError(
                f"num_buckets and num_hashes must be >= 1, got {num_buckets}, {num_hashes}"
            )
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if not initial_gap > 0.0:
            raise ValueError(f"initial_gap must be > 0 (p = 1 / B), got {initial_gap}")
        self.num_buckets = num_buckets
        self.num_hashes = num_hashes
        self.alpha = alpha
        self.initial_gap = initial_gap
        gen = torch.Generator().manual_seed(seed)
        # a in [1, P) so no hash function is constant; b in [0, P).
        self.register_buffer("hash_a", torch.randint(1, _PRIME, (num_hashes, 1), generator=gen))
        self.register_buffer("hash_b", torch.randint(0, _PRIME, (num_hashes, 1), generator=gen))
        shape = (num_hashes, num_buckets)
        self.register_buffer("last_step", torch.zeros(shape, dtype=torch.int64))  # A
        self.register_buffer("gap", torch.full(shape, float(initial_gap), dtype=torch.float64))  # B

    def buckets(self, item_ids: torch.Tensor) -> torch.Tensor:
        """LongTensor[B] ids -> LongTensor[num_hashes, B] bucket of each id under each hash."""
        x = item_ids.to(self.hash_a.device, torch.int64).reshape(1, -1) % _PRIME
        h = (self.hash_a * x + self.hash_b) % _PRIME
        # Map [0, P) to [0, H) by its high part, (h * H) div P, not by h mod H: when a is close to
        # a multiple of H (a = 128k for H = 128 happens), h mod H barely moves across nearby ids
        # and whole id ranges share one bucket. h * H < 2^31 * H fits int64 for any sane H.
        return h * self.num_buckets // _PRIME

    @torch.no_grad()
    def update(self, item_ids: torch.Tensor, step: int) -> None:
        """Record the items of training step ``step`` (Algorithm 2, one call per batch).

        Vectorised, yet equal to the paper's per-example loop: every example of a batch shares
        step ``t``, so only the first hit of a bucket sees a non-zero gap ``t - A``; the ``c - 1``
        later hits average in a gap of 0. A bucket hit ``c`` times therefore ends with
        ``B = (1-a)^(c-1) * ((1-a) * B + a * (t - A))`` and ``A = t``.
        """
        offsets = torch.arange(self.num_hashes, device=self.gap.device)[:, None] * self.num_buckets
        flat = (self.buckets(item_ids) + offsets).reshape(-1)
        hit, count = torch.unique(flat, return_counts=True)
        gap, last = self.gap.view(-1), self.last_step.view(-1)
        keep = 1.0 - self.alpha
        first = keep * gap[hit] + self.alpha * (step - last[hit]).to(gap.dtype)
        gap[hit] = first * keep ** (count - 1).to(gap.dtype)
        last[hit] = step

    def probability(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Tensor[B] estimated occurrences per step (batch) of each item, ``1 / max_i B_i``."""
        return (1.0 / self._largest_gap(item_ids)).to(torch.get_default_dtype())

    def log_q(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Tensor[B] ``log p`` of each item: the term the log-Q correction subtracts."""
        return (-torch.log(self._largest_gap(item_ids))).to(torch.get_default_dtype())

    def _largest_gap(self, item_ids: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(self.num_hashes, device=self.gap.device)[:, None]
        return self.gap[rows, self.buckets(item_ids)].amax(dim=0).reshape(item_ids.shape)

    def extra_repr(self) -> str:
        return (
            f"num_buckets={self.num_buckets}, num_hashes={self.num_hashes}, alpha={self.alpha}, "
            f"initial_gap={self.initial_gap}"
        )
