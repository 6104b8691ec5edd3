"""EBR hard negatives (Huang et al., KDD 2020): the rank window, false-negative guards, mixing."""
from __future__ import annotations

import math

import pytest
import torch

from twotower.errors import ConfigError
from twotower.objectives.hard_negatives import (hard_negative_softmax, hardest_in_batch,
                                                 mine_hard_negatives, mined_log_q)
from twotower.objectives.losses import in_batch_softmax


def ranks_of(q, items):
    return torch.argsort(torch.argsort(-(q @ items.T), dim=1), dim=1) + 1  # 1-based rank


@pytest.mark.parametrize("chunks", [(1024, 65536), (3, 17)])
def test_mined_negatives_lie_in_the_window_and_are_never_positives(chunks):
    g = torch.Generator().manual_seed(0)
    q, items = torch.randn(40, 8, generator=g), torch.randn(700, 8, generator=g)
    positives = torch.full((40, 3), -1)
    positives[:, 0] = torch.randint(700, (40,), generator=g)
    positives[::2, 1] = torch.randint(700, (20,), generator=g)
    rank = ranks_of(q, items)
    # make some positives fall inside the window: they must still never be drawn
    positives[::3, 2] = (rank[::3] == 150).float().argmax(1)
    rows, valid = mine_hard_negatives(q, items, positives, (101, 300), draws=6,
                                      generator=torch.Generator().manual_seed(1),
                                      query_chunk=chunks[0], item_chunk=chunks[1])
    assert valid.all()
    r = rank.gather(1, rows)
    assert ((r >= 101) & (r <= 300)).all()
    for j in range(40):
        assert not set(rows[j].tolist()) & set(positives[j][positives[j] >= 0].tolist())


def test_margin_drops_candidates_scoring_near_the_positive():
    g = torch.Generator().manual_seed(0)
    q, items = torch.randn(10, 8, generator=g), torch.randn(500, 8, generator=g)
    scores = q @ items.T
    positives = scores.argsort(1, descending=True)[:, 150:151]  # positive at rank 151
    rows, valid = mine_hard_negatives(q, items, positives, (101, 400), draws=20, margin=0.5)
    best = scores.gather(1, positives)[:, 0]
    got = scores.gather(1, rows)
    assert (got[valid] < (best[:, None] - 0.5).expand_as(got)[valid]).all()


def test_empty_window_is_reported_invalid_and_bad_windows_refused():
    q, items = torch.randn(2, 4), torch.randn(50, 4)
    rows, valid = mine_hard_negatives(q, items, torch.full((2, 1), -1), (101, 500))
    assert not valid.any()
    with pytest.raises(ConfigError, match="window"):
        mine_hard_negatives(q, items, torch.full((2, 1), -1), (10, 5))


def test_online_hardest_in_batch_skips_the_row_own_item():
    logits = torch.tensor([[5., 4., 3., 9.], [1., 5., 2., 0.], [0., 8., 5., 1.], [9., 0., 0., 5.]])
    ids = torch.tensor([7, 8, 9, 7])  # rows 0 and 3 hold the same item
    hard = hardest_in_batch(logits, ids, 1)
    assert hard[:, 0].tolist() == [1, 2, 1, 1]


def test_mixed_correction_subtracts_each_kinds_log_q():
    g = torch.Generator().manual_seed(0)
    b, h = 6, 3
    pos = torch.randn(b, generator=g)
    easy = torch.randn(b, b, generator=g)
    easy[range(b), range(b)] = pos
    ids = torch.arange(10, 10 + b)
    easy_lq = torch.randn(b, generator=g)
    hard = torch.randn(b, h, generator=g)
    hard_lq = mined_log_q(2, 400)
    loss = hard_negative_softmax(pos, easy, ids, easy_lq, hard, hard_lq)
    # reference: one softmax over [positive, the other in-batch items, the hard ones] with each
    # candidate's own log q subtracted
    ref = 0.0
    for r in range(b):
        others = [c for c in range(b) if c != r]
        row = torch.cat([(pos[r] - easy_lq[r])[None], easy[r, others] - easy_lq[others],
                         hard[r] - hard_lq])
        ref += -torch.log_softmax(row, 0)[0]
    assert torch.allclose(loss, ref / b, atol=1e-5)
    assert math.isclose(hard_lq, math.log(2 / 400))


def test_without_hard_negatives_it_is_the_in_batch_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 8, generator=g)
    ids, lq = torch.arange(8), torch.randn(8, generator=g)
    plain = in_batch_softmax(logits, ids, lq)
    mixed = hard_negative_softmax(logits.diagonal(), logits, ids, lq, torch.zeros(8, 1), 0.0,
                                  hard_valid=torch.zeros(8, 1, dtype=torch.bool))
    assert torch.allclose(plain, mixed, atol=1e-5)
