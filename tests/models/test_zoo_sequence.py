"""Defining behaviours of the sequence / multi-interest models (YouTubeDNN, MIND, ComiRec, SDM, PDN)."""
import numpy as np
import pyarrow as pa
import pytest
import torch

from twotower.config import FeatureKind
from twotower.data.movielens import cut_sessions, leave_one_out
from twotower.index.exact import exact_search
from twotower.models import build_model
from twotower.models.comirec import ComiRecConfig
from twotower.serve.aggregation import controllable_aggregate
from twotower.models.mind import MindConfig
from twotower.models.pdn import PDNConfig
from twotower.serve.paths import item_to_item_table, path_retrieve
from twotower.models.sdm import SDMConfig
from twotower.models.youtubednn import SequenceModelConfig
from twotower.objectives.tasks import build_task
from twotower.config import ObjectiveConfig
from twotower.towers.capsule import CapsuleRouting, dynamic_interest_count, squash
from twotower.towers.gate import FusionGate
from twotower.towers.sequence import label_aware_attention
from twotower.types import Batch, FieldSpec, Side

N_ITEMS, E = 40, 8


def schema(seq_names=("history",)):
    s = {"user_id": FieldSpec(FeatureKind.CATEGORICAL, Side.QUERY, 20, "user_id", E)}
    for n in seq_names:
        s[n] = FieldSpec(FeatureKind.SEQUENCE, Side.QUERY, N_ITEMS, "item_id", E)
    s["item_id"] = FieldSpec(FeatureKind.CATEGORICAL, Side.ITEM, N_ITEMS, "item_id", E)
    return s


def batch(b=6, length=10, seq_names=("history",), seed=0):
    g = torch.Generator().manual_seed(seed)
    q = {"user_id": torch.randint(2, 20, (b,), generator=g)}
    for n in seq_names:
        x = torch.randint(2, N_ITEMS, (b, length), generator=g)
        lens = torch.randint(1, length + 1, (b,), generator=g)
        lens[0] = length
        x[torch.arange(length).unsqueeze(0) >= lens.unsqueeze(1)] = 0
        q[n] = x
    ids = torch.randperm(N_ITEMS - 2, generator=g)[:b] + 2
    return Batch(query=q, item={"item_id": ids}, item_ids=ids)


def test_routing_iterations_change_capsules_and_squash_bounds_norms():
    torch.manual_seed(0)
    routing = CapsuleRouting(E, E, num_interests=3, iterations=3, max_len=10)
    e = torch.randn(4, 10, E) * 3
    mask = torch.ones(4, 10, dtype=torch.bool)
    one, three = routing(e, mask, iterations=1), routing(e, mask, iterations=3)
    assert not torch.allclose(one, three, atol=1e-4)
    assert (three.norm(dim=-1) < 1).all() and (one.norm(dim=-1) < 1).all()
    z = torch.randn(100, E) * torch.logspace(-3, 3, 100).unsqueeze(1)
    s = squash(z)
    assert (s.norm(dim=-1) < 1).all()
    assert torch.allclose(torch.nn.functional.cosine_similarity(s, z, dim=-1), torch.ones(100), atol=1e-4)
    # MIND's dynamic interest count: max(1, min(K, log2 n))
    m = torch.arange(64).unsqueeze(0) < torch.tensor([[1], [2], [8], [64]])
    assert dynamic_interest_count(m, 4).sum(1).tolist() == [1, 1, 3, 4]


def test_label_aware_attention_large_power_picks_closest_interest():
    torch.manual_seed(1)
    interests = torch.nn.functional.normalize(torch.randn(3, 4, E), dim=-1)
    items = torch.nn.functional.normalize(torch.randn(5, E), dim=-1)
    closest = torch.einsum("bkd,nd->bnk", interests, items).argmax(-1)  # [B, N]
    expected = interests[torch.arange(3).unsqueeze(1), closest]  # [B, N, D]
    for out in (label_aware_attention(interests, items, power=1e4),
                label_aware_attention(interests, items, power=0, hard=True)):
        assert torch.allclose(out, expected, atol=1e-4)
    mean = label_aware_attention(interests, items, power=0.0)  # p = 0: plain average
    assert torch.allclose(mean, interests.mean(1, keepdim=True).expand_as(mean), atol=1e-6)


def test_sdm_gate_in_unit_interval_and_depends_on_both_inputs():
    torch.manual_seed(2)
    gate = FusionGate(E, E)
    u, s, p = torch.randn(5, E), torch.randn(5, E), torch.randn(5, E)
    g = gate.gate(u, s, p)
    assert ((g > 0) & (g < 1)).all()
    assert not torch.allclose(g, gate.gate(u, s + 1, p))
    assert not torch.allclose(g, gate.gate(u, s, p + 1))
    out = gate(u, s, p)
    assert torch.allclose(out, (1 - g) * p + g * s)


def test_comirec_lambda_zero_is_accuracy_order_and_lambda_adds_diversity():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(4, 30))
    cats = rng.integers(0, 3, size=(4, 30))
    cats[:, np.argsort(-scores, axis=1)[0, :10]] = 0  # top items share a category
    pure = controllable_aggregate(scores, cats, 10, lam=0.0)
    assert (pure == np.argsort(-scores, axis=1)[:, :10]).all()
    diverse = controllable_aggregate(scores, cats, 10, lam=5.0)
    n_cats = lambda pick: np.mean([len(set(cats[r, pick[r]])) for r in range(4)])  # noqa: E731
    assert n_cats(diverse) >= n_cats(pure)
    assert all(len(set(row)) == 10 for row in diverse)  # no repeats
    multi_hot = np.eye(3, dtype=bool)[cats]  # [B, C, G] works the same way
    assert (controllable_aggregate(scores, multi_hot, 10, 0.0) == pure).all()


def test_multi_interest_retrieval_merges_and_dedupes():
    torch.manual_seed(3)
    model = build_model(MindConfig(name="mind", embedding_dim=E, output_dim=E, hidden=[16],
                                   num_interests=3, max_len=10), schema()).eval()
    b = batch()
    q = model.retrieval_query(model.encode_query(b.query))  # [B, K, D]
    assert q.shape == (6, 3, E)
    items = model.retrieval_item(model.encode_item({"item_id": torch.arange(2, N_ITEMS)}))
    scores, pos = exact_search(q, items, k=10)
    for r in range(6):
        assert len(set(pos[r].tolist())) == 10  # deduplicated across interests
        best = (q[r] @ items.T).amax(0)  # max over interests
        assert torch.allclose(scores[r], best.topk(10).values, atol=1e-5)


def test_pdn_path_scores_and_item_to_item_serving():
    torch.manual_seed(4)
    model = build_model(PDNConfig(name="pdn", embedding_dim=E, output_dim=E, max_len=10), schema()).eval()
    b = batch()
    q, i = model.encode_query(b.query), model.encode_item({"item_id": torch.arange(2, N_ITEMS)})
    log_w, mask = model.trigger_log_weights(b.query)
    a = model.trigger_vectors(b.query["history"])
    sim = torch.einsum("bld,nd->bnl", a, i[:, 0, :-1]) / model.temperature
    manual = torch.log((torch.exp(log_w).unsqueeze(1) * mask.unsqueeze(1) * torch.exp(sim)).sum(-1))
    assert torch.allclose(model.logits(q, i), manual, atol=1e-4)
    # serving with a full item-to-item table reproduces the path scores (except self-paths)
    corpus_pos = np.full(N_ITEMS, -1)
    corpus_pos[2:] = np.arange(N_ITEMS - 2)
    table = item_to_item_table(model, torch.arange(2, N_ITEMS), model.retrieval_item(i), k=N_ITEMS)
    s, pos = path_retrieve(model, b.query, table, corpus_pos, N_ITEMS - 2, k=5)
    for r in range(6):
        for score, p in zip(s[r].tolist(), pos[r].tolist()):
            trig = mask[r] & (b.query["history"][r] != p + 2)  # a trigger is not its own path
            ref = torch.logsumexp((log_w[r] + sim[r, p]).masked_fill(~trig, float("-inf")), 0)
            assert abs(score - ref.item()) < 1e-3
        assert len(set(pos[r].tolist())) == 5


@pytest.mark.parametrize("name,cfg,seqs", [
    ("youtubednn", SequenceModelConfig, ("history",)),
    ("mind", MindConfig, ("history",)),
    ("comirec_sa", ComiRecConfig, ("history",)),
    ("comirec_dr", ComiRecConfig, ("history",)),
    ("sdm", SDMConfig, ("session", "long_history")),
    ("sdm", SDMConfig, ("history",)),
    ("pdn", PDNConfig, ("history",)),
])
def test_models_train_with_in_batch_softmax(name, cfg, seqs):
    torch.manual_seed(5)
    extra = {"max_len": 10} if "max_len" in cfg.model_fields else {}
    if seqs == ("session", "long_history"):
        extra = {"history": "session", "long_history": "long_history"}
    model = build_model(cfg(name=name, embedding_dim=E, output_dim=E, hidden=[16], **extra), schema(seqs))
    task = build_task(ObjectiveConfig(), item_id="item_id")
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    b = batch(b=16, seq_names=seqs)
    b.query[seqs[0]][1] = 0  # an empty history is allowed
    losses = []
    for step in range(15):
        loss, _ = task.loss(model, b, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    model.eval()
    q = model.retrieval_query(model.encode_query(b.query))
    assert torch.isfinite(q).all() and q.dim() == 3
    assert model.contract()["model"] == name


def test_sessions_cut_by_time_gap():
    user = np.array([1, 1, 1, 1, 1, 2, 2])
    item = np.array([10, 11, 12, 13, 14, 20, 21])
    ts = np.array([0, 10, 5000, 5010, 5020, 0, 99999])
    session, long = cut_sessions(user, item, ts, gap=100, session_len=2, long_len=5)
    assert session.to_pylist() == [[], [10], [10, 11], [12], [12, 13], [], [20]]
    assert long.to_pylist() == [[], [], [], [10, 11], [10, 11], [], []]
    log = leave_one_out(pa.table({"user_id": user, "item_id": item, "timestamp": ts}))
    assert log["history_ts"].to_pylist()[2] == [0, 10]


@pytest.mark.parametrize("power,hard", [(2.0, False), (0.0, False), (1e4, False), (2.0, True)])
def test_batched_label_aware_logits_equal_the_plain_form(power, hard):
    from twotower.towers.sequence import label_aware_logits, label_aware_logits_reference

    torch.manual_seed(7)
    valid = torch.rand(6, 4) > 0.4
    valid[0] = False  # no valid interest: scored with the first
    grads = []
    outs = []
    for fn in (label_aware_logits, label_aware_logits_reference):
        q = torch.randn(6, 4, E, requires_grad=True)
        i = torch.randn(9, E, requires_grad=True)
        with torch.no_grad():
            q.copy_(torch.randn(6, 4, E, generator=torch.Generator().manual_seed(1)))
            i.copy_(torch.randn(9, E, generator=torch.Generator().manual_seed(2)))
        out = fn(q, i, power, hard, valid)
        (out * torch.arange(9.0)).sum().backward()
        outs.append(out.detach())
        grads.append((q.grad, i.grad))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=1e-4)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_chunked_path_logsumexp_equals_the_plain_form():
    from twotower.towers.paths import path_logsumexp, path_logsumexp_reference

    res = []
    for fn in (lambda q, i: path_logsumexp(q, i, chunk=3), path_logsumexp_reference):
        g = torch.Generator().manual_seed(8)
        q = torch.randn(7, 5, E, generator=g).requires_grad_(True)
        i = torch.randn(11, E, generator=g).requires_grad_(True)
        out = fn(q, i)
        (out * torch.linspace(-1, 1, 11)).sum().backward()
        res.append((out.detach(), q.grad, i.grad))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
