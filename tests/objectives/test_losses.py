import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from twotower.objectives import (
    binary_cross_entropy,
    in_batch_softmax,
    logq_correct,
    mixed_negative_softmax,
    remove_accidental_hits,
    softmax_cross_entropy,
)


def per_row_reference(logits, positive_ids, candidate_ids, log_q, weight=None):
    """Plain loop: row i's positive is column i; other columns holding the same item are dropped."""
    losses = []
    for i in range(logits.shape[0]):
        kept = [
            logits[i, j] - log_q[j]
            for j in range(logits.shape[1])
            if j == i or candidate_ids[j] != positive_ids[i]
        ]
        losses.append(torch.logsumexp(torch.stack(kept), 0) - (logits[i, i] - log_q[i]))
    losses = torch.stack(losses)
    weight = torch.ones_like(losses) if weight is None else weight
    return (weight * losses).sum() / weight.sum()


def random_case(batch, extra, vocab, seed):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        batch_logits=torch.randn(batch, batch, generator=gen, dtype=torch.float64) * 3,
        batch_ids=torch.randint(0, vocab, (batch,), generator=gen),
        batch_log_q=torch.randn(batch, generator=gen, dtype=torch.float64),
        extra_logits=torch.randn(batch, extra, generator=gen, dtype=torch.float64) * 3,
        extra_ids=torch.randint(0, vocab, (extra,), generator=gen),
        extra_log_q=torch.randn(extra, generator=gen, dtype=torch.float64),
        weight=torch.rand(batch, generator=gen, dtype=torch.float64) + 0.1,
    )


def test_logq_correct_subtracts_exactly():
    logits = torch.randn(3, 4)
    log_q = torch.randn(4)
    assert torch.equal(logq_correct(logits, log_q), logits - log_q[None, :])


def test_in_batch_softmax_matches_hand_computation():
    logits = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=torch.float64)
    log_q = torch.tensor([math.log(2.0), math.log(0.5)], dtype=torch.float64)
    a, b = 1.0 - math.log(2.0), 2.0 - math.log(0.5)  # row 0, corrected
    c, d = 0.5 - math.log(2.0), -1.0 - math.log(0.5)  # row 1, corrected
    row0 = -(a - math.log(math.exp(a) + math.exp(b)))
    row1 = -(d - math.log(math.exp(c) + math.exp(d)))
    loss = in_batch_softmax(logits, torch.tensor([1, 2]), log_q)
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    uncorrected = in_batch_softmax(logits, torch.tensor([1, 2]))
    assert uncorrected.item() == pytest.approx(F.cross_entropy(logits, torch.arange(2)).item())


def test_duplicate_of_the_positive_is_not_a_negative():
    ids = torch.tensor([5, 7, 5, 9])
    logits = torch.randn(4, 4, requires_grad=True)
    loss = in_batch_softmax(logits, ids)
    loss.backward()
    assert logits.grad[0, 2] == 0 and logits.grad[2, 0] == 0
    assert logits.grad[0, 0] != 0 and logits.grad[2, 2] != 0  # own positives still train
    bumped = logits.detach().clone()
    bumped[0, 2] += 100.0
    bumped[2, 0] -= 100.0
    assert in_batch_softmax(bumped, ids).item() == pytest.approx(loss.item(), rel=1e-6)
    masked = remove_accidental_hits(logits.detach(), ids, ids, torch.arange(4))
    probs = masked.softmax(dim=1)
    assert probs[0, 2] == 0 and probs[2, 0] == 0 and probs[0, 0] > 0


def test_remove_accidental_hits_without_positive_column_masks_every_match():
    positives, candidates = torch.tensor([4, 6]), torch.tensor([4, 1, 4])
    masked = remove_accidental_hits(torch.zeros(2, 3), positives, candidates)
    assert (masked[0, [0, 2]] < -1e30).all() and (masked[0, 1] == 0) and (masked[1] == 0).all()


@pytest.mark.parametrize("use_log_q", [False, True])
def test_in_batch_softmax_equals_loop_reference_with_gradients(use_log_q):
    case = random_case(batch=7, extra=0, vocab=4, seed=1)  # vocab 4 < batch 7: many duplicates
    logits = case["batch_logits"].requires_grad_()
    ids, weight = case["batch_ids"], case["weight"]
    log_q = case["batch_log_q"] if use_log_q else torch.zeros(7, dtype=torch.float64)
    got = in_batch_softmax(logits, ids, log_q if use_log_q else None, weight)
    (got_grad,) = torch.autograd.grad(got, logits)
    want = per_row_reference(logits, ids, ids, log_q, weight)
    (want_grad,) = torch.autograd.grad(want, logits)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_grad, want_grad)


def test_weights_give_a_weighted_mean():
    case = random_case(batch=5, extra=0, vocab=100, seed=2)
    logits, ids = case["batch_logits"].float(), case["batch_ids"]
    rows = F.cross_entropy(logits, torch.arange(5), reduction="none")  # distinct ids: no masking
    w = torch.tensor([1.0, 0.0, 2.0, 0.5, 0.0])
    loss = in_batch_softmax(logits, ids, weight=w)
    torch.testing.assert_close(loss, (w * rows).sum() / w.sum())
    torch.testing.assert_close(in_batch_softmax(logits, ids, weight=3 * w), loss)
    # weight 0 removes a row: its logits get no gradient.
    logits.requires_grad_()
    (grad,) = torch.autograd.grad(in_batch_softmax(logits, ids, weight=w), logits)
    assert (grad[[1, 4]] == 0).all()
    assert in_batch_softmax(logits, ids, weight=torch.zeros(5)).item() == 0.0
    with pytest.raises(ValueError):
        in_batch_softmax(logits, ids, weight=torch.ones(4))


def mixed_args(case):
    return (
        torch.diagonal(case["batch_logits"]),
        case["batch_logits"],
        case["batch_ids"],
        case["batch_log_q"],
        case["extra_logits"],
        case["extra_ids"],
        case["extra_log_q"],
    )


def test_mixed_without_extra_equals_in_batch_softmax():
    case = random_case(batch=6, extra=0, vocab=3, seed=3)
    got = mixed_negative_softmax(*mixed_args(case), weight=case["weight"])
    want = in_batch_softmax(
        case["batch_logits"], case["batch_ids"], case["batch_log_q"], weight=case["weight"]
    )
    assert torch.equal(got, want)


def check_mixed_against_reference(case):
    args = list(mixed_args(case))
    batch_logits = args[1].clone().requires_grad_()
    extra_logits = args[4].clone().requires_grad_()
    args[0], args[1], args[4] = torch.diagonal(batch_logits), batch_logits, extra_logits
    got = mixed_negative_softmax(*args, weight=case["weight"])
    got_grads = torch.autograd.grad(got, [batch_logits, extra_logits])
    want = per_row_reference(
        torch.cat([batch_logits, extra_logits], dim=1),
        case["batch_ids"],
        torch.cat([case["batch_ids"], case["extra_ids"]]),
        torch.cat([case["batch_log_q"], case["extra_log_q"]]),
        case["weight"],
    )
    want_grads = torch.autograd.grad(want, [batch_logits, extra_logits])
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)


def test_mixed_equals_loop_reference_with_gradients():
    case = random_case(batch=6, extra=9, vocab=5, seed=4)  # extra draws hit positives too
    assert (case["extra_ids"][None, :] == case["batch_ids"][:, None]).any()
    check_mixed_against_reference(case)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 8),
    extra=st.integers(0, 8),
    vocab=st.integers(1, 10),
    seed=st.integers(0, 2**16),
)
def test_mixed_property_random_shapes(batch, extra, vocab, seed):
    check_mixed_against_reference(random_case(batch, extra, vocab, seed))


def test_mixed_pos_logits_replace_the_diagonal():
    case = random_case(batch=4, extra=3, vocab=50, seed=5)
    args = list(mixed_args(case))
    args[0] = args[0] + 1.0
    shifted = case["batch_logits"] + torch.diag(torch.ones(4, dtype=torch.float64))
    want = mixed_negative_softmax(torch.diagonal(shifted), shifted, *args[2:])
    torch.testing.assert_close(mixed_negative_softmax(*args), want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_logits_with_masked_entries_stay_finite(dtype):
    ids = torch.tensor([1, 2, 1, 1])
    logits = (torch.randn(4, 4) * 20).to(dtype).requires_grad_()
    log_q = torch.tensor([-3.0, 0.0, -3.0, -3.0])
    loss = in_batch_softmax(logits, ids, log_q)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    mixed = mixed_negative_softmax(
        torch.diagonal(logits), logits, ids, log_q,
        torch.randn(4, 3).to(dtype), torch.tensor([1, 5, 2]), torch.full((3,), -1.0),
    )
    assert torch.isfinite(mixed)


def test_binary_cross_entropy():
    logits = torch.tensor([2.0, -1.0, 0.5])
    labels = torch.tensor([1.0, 0.0, 0.0])
    rows = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    torch.testing.assert_close(binary_cross_entropy(logits, labels), rows.mean())
    w = torch.tensor([0.0, 1.0, 3.0])
    torch.testing.assert_close(binary_cross_entropy(logits, labels, w), (w * rows).sum() / 4)


def test_softmax_cross_entropy():
    logits = torch.randn(5, 3)
    labels = torch.tensor([0, 2, 1, 1, 0])
    rows = F.cross_entropy(logits, labels, reduction="none")
    torch.testing.assert_close(softmax_cross_entropy(logits, labels), rows.mean())
    w = torch.tensor([1.0, 0.0, 0.0, 2.0, 1.0])
    torch.testing.assert_close(softmax_cross_entropy(logits, labels, w), (w * rows).sum() / 4)
