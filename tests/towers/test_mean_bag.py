"""mean_bag's own backward gives PyTorch's embedding-bag gradient, padding rows included."""
import pytest
import torch
import torch.nn.functional as F

from twotower.towers.embedding import _MeanBag, mean_bag


def _ids(b, length, vocab, pad_frac, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (b, length), generator=g)
    ids[torch.rand(b, length, generator=g) < pad_frac] = 0
    ids[0] = 0  # an all-padding row
    ids[1, :] = 3  # one id repeated over a whole row
    return ids


@pytest.mark.parametrize("pad_frac", [0.1, 0.5, 0.9])
def test_mean_bag_gradient_equals_embedding_bag(pad_frac):
    ids = _ids(64, 12, 30, pad_frac, seed=int(pad_frac * 10))
    weight = torch.randn(30, 8, requires_grad=True)
    grad_out = torch.randn(64, 8)
    ref = F.embedding_bag(ids, weight, mode="mean", padding_idx=0)
    (ref_grad,) = torch.autograd.grad(ref, weight, grad_out)
    out = _MeanBag.apply(ids, weight)
    (got_grad,) = torch.autograd.grad(out, weight, grad_out)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(got_grad, ref_grad)
    assert torch.equal(out[0], torch.zeros(8))  # all-padding row pools to zeros...
    assert torch.equal(got_grad[0], torch.zeros(8))  # ...and the padding row gets no gradient


def test_mean_bag_all_padding_batch_and_eval_path():
    ids = torch.zeros(5, 4, dtype=torch.long)
    weight = torch.randn(10, 3, requires_grad=True)
    out = mean_bag(ids, weight)
    out.sum().backward()
    assert torch.equal(out, torch.zeros(5, 3)) and torch.equal(weight.grad, torch.zeros(10, 3))
    with torch.no_grad():  # inference takes PyTorch's op directly
        ids = _ids(8, 5, 10, 0.3, seed=1)
        torch.testing.assert_close(mean_bag(ids, weight),
                                   F.embedding_bag(ids, weight, mode="mean", padding_idx=0))
