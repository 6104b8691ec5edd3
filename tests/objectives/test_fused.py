"""The fused in-batch softmax equals the plain path (loss and gradients), and is used by the task."""
import torch

from twotower.objectives.fused import duplicate_positions, fused_in_batch_softmax
from twotower.objectives.losses import in_batch_softmax


def _pair(weight, remove_hits, seed=0, b=48, d=8):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 12, (b,), generator=g)  # many duplicates
    q = torch.randn(b, d, generator=g, requires_grad=True)
    i = torch.randn(b, d, generator=g, requires_grad=True)
    log_q = torch.randn(b, generator=g)
    w = None if weight is None else torch.rand(b, generator=g)
    fused = fused_in_batch_softmax(q, i, ids, log_q, w, remove_hits)
    gq, gi = torch.autograd.grad(fused, (q, i))
    plain = in_batch_softmax(q @ i.T, ids, log_q, w, remove_hits)
    pq, pi = torch.autograd.grad(plain, (q, i))
    return fused, plain, (gq, gi), (pq, pi)


def test_fused_equals_plain_loss_and_gradients():
    for weight in (None, "w"):
        for remove_hits in (True, False):
            fused, plain, gf, gp = _pair(weight, remove_hits)
            assert torch.allclose(fused, plain, atol=1e-5)
            for a, b in zip(gf, gp):
                assert torch.allclose(a, b, atol=1e-5)


def test_duplicate_positions_are_exactly_the_off_diagonal_equal_pairs():
    ids = torch.tensor([5, 3, 5, 7, 3, 5])
    rows, cols = duplicate_positions(ids)
    got = set(zip(rows.tolist(), cols.tolist()))
    want = {(r, c) for r in range(6) for c in range(6) if r != c and ids[r] == ids[c]}
    assert got == want
    assert duplicate_positions(torch.tensor([1, 2, 3]))[0].numel() == 0
    assert duplicate_positions(torch.tensor([4]))[0].numel() == 0
    g = torch.Generator().manual_seed(1)
    for vocab in (3, 40, 1000):  # every row a duplicate ... almost none
        ids = torch.randint(0, vocab, (200,), generator=g)
        rows, cols = duplicate_positions(ids)
        same = ids[:, None] == ids[None, :]
        same.fill_diagonal_(False)
        assert sorted(zip(rows.tolist(), cols.tolist())) == [tuple(x) for x in same.nonzero().tolist()]


def test_fused_matches_plain_path_at_training_scale():
    """Cosine / 0.05 logits, a log-Q term and many accidental hits, as in a MovieLens batch."""
    g = torch.Generator().manual_seed(3)
    b, d = 512, 16
    ids = torch.randint(0, 150, (b,), generator=g)
    q = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1).div(0.05).requires_grad_()
    i = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1).requires_grad_()
    log_q = -8 * torch.rand(b, generator=g)
    for w in (None, torch.rand(b, generator=g)):
        fused = fused_in_batch_softmax(q, i, ids, log_q, w)
        plain = in_batch_softmax(q @ i.T, ids, log_q, w)
        torch.testing.assert_close(fused, plain)
        for a, c in zip(torch.autograd.grad(fused, (q, i)), torch.autograd.grad(plain, (q, i))):
            torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-7)


def test_task_uses_fused_path_for_plain_models_with_the_same_result():
    from twotower.config import FeatureConfig, ModelConfig, ObjectiveConfig
    from twotower.features.encoders import FIRST_ID
    from twotower.models import build_model
    from twotower.objectives import tasks
    from twotower.types import Batch, FieldSpec, Side

    schema = {"user_id": FieldSpec(FeatureConfig(name="u", side="query").kind, Side.QUERY, 20, "user_id", 8),
              "item_id": FieldSpec(FeatureConfig(name="i", side="item").kind, Side.ITEM, 20, "item_id", 8)}
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="dssm", embedding_dim=8, hidden=[16], output_dim=8), schema)
    assert tasks.uses_plain_logits(model)
    task = tasks.build_task(ObjectiveConfig(logq_correction=False), None, "item_id")
    items = torch.randint(FIRST_ID, 20, (32,))
    batch = Batch(query={"user_id": torch.randint(FIRST_ID, 20, (32,))}, item={"item_id": items},
                  item_ids=items)
    fused, _ = task.loss(model, batch, 0)
    q, i = model.encode_query(batch.query), model.encode_item(batch.item)
    plain = in_batch_softmax(model.logits(q, i) / task.temperature, items)
    assert torch.allclose(fused, plain, atol=1e-5)


def test_a_model_overriding_logits_is_not_plain():
    """The fused path reads q[:, 0] and i[:, 0] only: a model with its own scoring must not get it,
    unless it declares ``plain_similarity``."""
    from twotower.models import TwoTowerModel
    from twotower.models.mind import MultiInterestModel
    from twotower.models.parallel import ParallelTwoTower
    from twotower.models.pdn import PDN
    from twotower.objectives.tasks import uses_plain_logits

    class Scaled(TwoTowerModel):
        def logits(self, q, i):
            return 2 * super().logits(q, i)

    class Declared(Scaled):
        plain_similarity = True

    assert TwoTowerModel.plain_similarity and not Scaled.plain_similarity and Declared.plain_similarity
    for cls in (MultiInterestModel, ParallelTwoTower):
        assert not cls.plain_similarity
    assert PDN.scores_are_logits and not uses_plain_logits(PDN.__new__(PDN))
