"""objective.in_batch_block: the batch's softmax runs over blocks of rows, each row's negatives
being the other rows of its block; the loss is the (weighted) mean over all rows."""
import pytest
import torch

from twotower.config import ObjectiveConfig
from twotower.errors import ConfigError
from twotower.objectives.losses import in_batch_softmax
from twotower.objectives.tasks import blockwise, build_task


def _plain(q, i, ids, log_q, weight):
    return in_batch_softmax(q @ i.T, ids, log_q, weight)


def _data(b=10, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, d, generator=g, requires_grad=True)
    i = torch.randn(b, d, generator=g, requires_grad=True)
    ids = torch.randint(0, 6, (b,), generator=g)
    return q, i, ids, -torch.rand(b, generator=g), torch.rand(b, generator=g)


def test_blocks_are_independent_softmaxes_averaged_over_rows():
    q, i, ids, log_q, w = _data()
    got = blockwise(_plain, 4, q, i, ids, log_q, None)  # blocks of 4, 4 and 2 rows
    per_row = torch.cat([torch.nn.functional.cross_entropy(
        _masked(q[s:e] @ i[s:e].T - log_q[s:e][None, :], ids[s:e]), torch.arange(e - s),
        reduction="none") for s, e in ((0, 4), (4, 8), (8, 10))])
    torch.testing.assert_close(got, per_row.mean())
    # the whole batch as one softmax is a different loss: rows see other blocks' items there
    assert not torch.allclose(got, in_batch_softmax(q @ i.T, ids, log_q))


def _masked(logits, ids):
    same = ids[:, None] == ids[None, :]
    same.fill_diagonal_(False)
    return logits.masked_fill(same, float("-inf"))


def test_weighted_blocks_equal_the_weighted_mean_of_rows():
    q, i, ids, log_q, w = _data(seed=1)
    got = blockwise(_plain, 3, q, i, ids, log_q, w)
    rows = torch.cat([torch.nn.functional.cross_entropy(
        _masked(q[s:s + 3] @ i[s:s + 3].T - log_q[s:s + 3][None, :], ids[s:s + 3]),
        torch.arange(min(3, 10 - s)), reduction="none") for s in range(0, 10, 3)])
    torch.testing.assert_close(got, (rows * w).sum() / w.sum())


def test_a_block_as_large_as_the_batch_is_the_plain_softmax():
    q, i, ids, log_q, w = _data(seed=2)
    for block in (None, 10, 64):
        torch.testing.assert_close(blockwise(_plain, block, q, i, ids, log_q, w),
                                   in_batch_softmax(q @ i.T, ids, log_q, w))


def test_in_batch_block_belongs_to_the_in_batch_softmax():
    with pytest.raises(ConfigError, match="in_batch_block applies to in_batch_softmax"):
        build_task(ObjectiveConfig(name="pointwise_bce", in_batch_block=8))
