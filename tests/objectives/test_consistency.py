"""DMTL distillation, LDM's request softmax, and the safe weight expression."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from twotower.errors import ConfigError
from twotower.features.weight_expression import parse_weight_expression
from twotower.objectives.consistency import distillation_loss, request_softmax


def test_distillation_is_the_cross_entropy_to_the_teacher_distribution():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    got = distillation_loss(s, t, temperature=2.0)
    p = F.softmax(t / 2, 1)
    ref = -(p * F.log_softmax(s / 2, 1)).sum(1).mean()
    assert torch.allclose(got, ref)
    # minimised (equal to the teacher's entropy) when the student matches the teacher
    entropy = -(p * p.log()).sum(1).mean()
    assert torch.allclose(distillation_loss(t, t, 2.0), entropy, atol=1e-6)
    assert got > entropy


def test_distillation_gradient_equals_kl_gradient_and_mask_removes_candidates():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(4, 6, generator=g, requires_grad=True)
    t = torch.randn(4, 6, generator=g)
    distillation_loss(s, t).backward()
    s2 = s.detach().clone().requires_grad_(True)
    F.kl_div(F.log_softmax(s2, 1), F.softmax(t, 1), reduction="batchmean").backward()
    assert torch.allclose(s.grad, s2.grad, atol=1e-6)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[:, 3:] = False
    assert torch.allclose(distillation_loss(s, t, mask=mask), distillation_loss(s[:, :3], t[:, :3]))


def test_request_softmax_negatives_are_exactly_the_not_shown_items_of_the_same_request():
    scores = torch.tensor([2.0, 0.5, 1.0, 3.0, -1.0, 0.0])
    request = torch.tensor([10, 10, 10, 20, 20, 30])
    shown = torch.tensor([True, False, False, True, False, True])
    got = request_softmax(scores, request, shown)
    # request 10: shown 2.0 vs not-shown {0.5, 1.0}; request 20: 3.0 vs {-1.0}; request 30: no
    # not-shown candidate -> 0
    l10 = -torch.log_softmax(torch.tensor([2.0, 0.5, 1.0]), 0)[0]
    l20 = -torch.log_softmax(torch.tensor([3.0, -1.0]), 0)[0]
    assert torch.allclose(got, (l10 + l20 + 0) / 3)
    # another request's not-shown items never change a request's loss
    moved = scores.clone()
    moved[4] = 50.0  # request 20's negative
    assert torch.allclose(request_softmax(moved, request, shown)[None],
                          ((l10 + -torch.log_softmax(torch.tensor([3.0, 50.0]), 0)[0]) / 3)[None])


def test_request_softmax_gradients_push_shown_up_and_not_shown_down():
    scores = torch.zeros(4, requires_grad=True)
    request_softmax(scores, torch.tensor([1, 1, 1, 2]), torch.tensor([True, False, False, True])).backward()
    assert scores.grad[0] < 0 and (scores.grad[1:3] > 0).all() and scores.grad[3] == 0


def test_weight_expression_computes_over_columns():
    expr = parse_weight_expression("1 + 0.5*log1p(dwell) + 2*conversion", ["dwell", "conversion", "x"])
    assert expr.columns == ("dwell", "conversion")
    w = expr.evaluate({"dwell": np.array([0.0, np.e - 1]), "conversion": np.array([1, 0])}, 2)
    assert np.allclose(w, [3.0, 1.5])
    assert np.allclose(parse_weight_expression("max(rating - 3, 0) ** 2").evaluate(
        {"rating": np.array([1, 4, 5])}, 3), [0, 1, 4])


@pytest.mark.parametrize("text, message", [
    ("1 + dwel", "unknown column 'dwel'"),
    ("__import__('os').system('true')", "not allowed"),
    ("dwell.real", "not allowed"),
    ("[x for x in dwell]", "not allowed"),
    ("open('f')", "not allowed"),
    ("lambda: 1", "not allowed"),
    ("dwell[0]", "not allowed"),
    ("'a' * 3", "only numbers"),
    ("log1p", "is a function"),
    ("max(dwell)", "takes 2"),
    ("1 +", "not an expression"),
    ("", "non-empty"),
])
def test_weight_expression_refuses_unknown_names_and_never_runs_code(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_weight_expression(text, ["dwell"])


def test_weight_expression_refuses_negative_or_nan_weights_naming_the_row():
    expr = parse_weight_expression("dwell - 1")
    with pytest.raises(ConfigError, match="row 1"):
        expr.evaluate({"dwell": np.array([2.0, 0.0])}, 2)
