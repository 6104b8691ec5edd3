"""Defining behaviours of Octopus, SINE, AttRec and MGDSPR ."""
import torch

from twotower.models import build_model
from twotower.models.attrec import AttRecConfig
from twotower.models.mgdspr import MGDSPRConfig
from twotower.models.octopus import OctopusConfig
from twotower.models.sine import SINEConfig
from twotower.towers.attention import CausalEncoder, ShortTermSelfAttention, last_items
from twotower.towers.interests import ElasticArchives, SparseInterests
from twotower.towers.metric import distance_item, distance_query
from twotower.types import FeatureKind, FieldSpec, Side

E, N_ITEMS = 8, 40


def seq_schema():
    return {"user_id": FieldSpec(FeatureKind.CATEGORICAL, Side.QUERY, 20, "user_id", E),
            "history": FieldSpec(FeatureKind.SEQUENCE, Side.QUERY, N_ITEMS, "item_id", E),
            "item_id": FieldSpec(FeatureKind.CATEGORICAL, Side.ITEM, N_ITEMS, "item_id", E)}


def histories(rows):
    width = max(len(r) for r in rows)
    return torch.tensor([r + [0] * (width - len(r)) for r in rows])


def test_octopus_number_of_interests_follows_the_variety_of_the_sequence():
    # archives keyed on 4 orthogonal directions; behaviours near those directions
    arch = ElasticArchives(E, num_archives=4, min_share=0.1)
    with torch.no_grad():
        arch.keys.copy_(torch.eye(E)[:4] * 20)
    centre = torch.eye(E)[:4]
    clusters = [[0] * 12, [0] * 6 + [1] * 6, [0, 1, 2] * 4, [0, 1, 2, 3] * 3, [0] * 11 + [3]]
    h = torch.stack([centre[c] + 0.01 * torch.randn(12, E) for c in clusters])
    mask = torch.ones(5, 12, dtype=torch.bool)
    _, active = arch(h, mask)
    assert active.sum(1).tolist() == [1, 2, 3, 4, 1]  # a lone off-topic item is not an interest
    # the padding of a short history files nothing
    short = mask.clone()
    short[3, 4:] = False  # the first 4 items: one of each cluster
    _, act_short = arch(h, short)
    assert act_short[3].sum() == 4 and arch.filing(h, short)[3, 4:].abs().sum() == 0
    # in the model: interests are zeroed where inactive, and their count differs across users
    torch.manual_seed(0)
    model = build_model(OctopusConfig(name="octopus", embedding_dim=E, output_dim=E, hidden=[16],
                                      num_interests=4, max_len=12), seq_schema()).eval()
    x = histories([[2], [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [5, 5, 5, 5]])
    with torch.no_grad():
        q = model.encode_query({"user_id": torch.tensor([2, 3, 4]), "history": x})
        caps, act = model.interests({"history": x})
    valid = q.abs().sum(-1) > 0
    assert torch.equal(valid, act)
    assert act[0].sum() == 1  # one behaviour: one interest
    assert act.sum(1).max() > 1 and act.sum(1).min() == 1


def test_sine_only_the_top_k_concepts_of_the_pool_are_active():
    torch.manual_seed(1)
    sparse = SparseInterests(E, pool_size=16, active=3, max_len=10)
    x = torch.randn(1, 10, E)
    mask = torch.ones(1, 10, dtype=torch.bool)
    idx, _ = sparse.select(x + sparse.position[:10], mask)
    phi, v = sparse(x, mask)
    (phi.sum() + v.sum()).backward()
    touched = sparse.pool.grad.abs().sum(1) > 0
    assert touched.sum() == 3 and set(torch.nonzero(touched).flatten().tolist()) == set(idx[0].tolist())
    # moving a concept outside the top 3 (not into it) changes nothing
    other = next(j for j in range(16) if j not in idx[0].tolist())
    with torch.no_grad():
        before = (phi.clone(), v.clone())
        sparse.pool[other] *= 0.5
        phi2, v2 = sparse(x, mask)
    assert torch.allclose(phi2, before[0]) and torch.allclose(v2, before[1])
    # different sequences activate different concept sets from the same pool
    many = torch.randn(32, 10, E) * 3
    sets = {tuple(sorted(r)) for r in sparse.select(many, torch.ones(32, 10, dtype=torch.bool))[0].tolist()}
    assert len(sets) > 1
    # in the model: vector 0 (aggregated) trains and serves; the K interests follow
    model = build_model(SINEConfig(name="sine", embedding_dim=E, output_dim=E, concepts=16,
                                   num_interests=3, max_len=10), seq_schema()).eval()
    q = model.encode_query({"user_id": torch.tensor([2, 3]), "history": histories([[2, 3, 4], [5]])})
    assert q.shape == (2, 4, E) and model.retrieval_query(q).shape == (2, 1, E)


def test_attrec_score_is_weighted_distance_and_short_term_reads_recent_items():
    torch.manual_seed(2)
    a, b = [torch.randn(3, 4), torch.randn(3, 4)], [torch.randn(5, 4), torch.randn(5, 4)]
    w = [0.3, 0.7]
    ip = distance_query(a, w) @ distance_item(b, w).T
    ref = -(w[0] * torch.cdist(a[0], b[0]) ** 2 + w[1] * torch.cdist(a[1], b[1]) ** 2)
    assert torch.allclose(ip, ref, atol=1e-4)
    model = build_model(AttRecConfig(name="attrec", embedding_dim=E, output_dim=E, hidden=[],
                                     short_len=3, omega=0.3), seq_schema()).eval()
    users = torch.tensor([2, 3])
    x = histories([[2, 3, 4, 5, 6, 7], [8, 9]])
    older = x.clone()
    older[0, :3] = torch.tensor([20, 21, 22])  # only items before the 3 most recent differ
    with torch.no_grad():
        long, short = model.parts({"user_id": users, "history": x})
        long2, short2 = model.parts({"user_id": users, "history": older})
        items = {"item_id": torch.arange(2, 12)}
        v, xi = model.item_parts(items)
        scores = model.logits(model.encode_query({"user_id": users, "history": x}), model.encode_item(items))
    assert torch.equal(last_items(x, 3)[0], torch.tensor([5, 6, 7]))
    assert torch.allclose(short, short2) and torch.allclose(long, long2)
    for t in (long, short, v, xi):
        assert (t.norm(dim=-1) <= 1 + 1e-5).all()  # unit ball
    dist = 0.3 * torch.cdist(long, v) ** 2 + 0.7 * torch.cdist(short, xi) ** 2
    assert torch.allclose(scores, -dist, atol=1e-4)  # raw similarity (the objective scales it)
    # the diagonal of the affinity is masked: a sequence of one item attends to itself only,
    # two items attend only to each other
    att = ShortTermSelfAttention(E, 3)
    y = torch.randn(1, 2, E)
    m = torch.tensor([[True, True]])
    assert torch.allclose(att(y, m), y.flip(1).mean(1), atol=1e-5)


def test_causal_encoder_state_ignores_padding_and_the_future():
    torch.manual_seed(3)
    enc = CausalEncoder(E, max_len=6, blocks=2, heads=2).eval()
    x = torch.randn(2, 6, E)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    with torch.no_grad():
        out = enc(x, mask)
        x2 = x.clone()
        x2[1, 3:] = torch.randn(3, E)  # padding positions change
        out2 = enc(x2, mask)
        # the state after 3 items of row 0 equals row 1's (same first 3 items)
        x3 = x.clone()
        x3[1, :3] = x[0, :3]
        cut = enc(x3, mask)
    assert torch.allclose(out[1], out2[1], atol=1e-5)
    full3 = enc(x[:1, :3], torch.ones(1, 3, dtype=torch.bool))
    assert torch.allclose(cut[1], full3[0], atol=1e-5)


def mgdspr_schema(with_spans=True):
    s = {"user_id": FieldSpec(FeatureKind.CATEGORICAL, Side.QUERY, 20, "user_id", E),
         "query_text": FieldSpec(FeatureKind.TEXT, Side.QUERY, 30, "query_text", E),
         "past_queries": FieldSpec(FeatureKind.SEQUENCE, Side.QUERY, 30, "query_text", E)}
    if with_spans:
        s["session"] = FieldSpec(FeatureKind.SEQUENCE, Side.QUERY, N_ITEMS, "item_id", E)
        s["long_history"] = FieldSpec(FeatureKind.SEQUENCE, Side.QUERY, N_ITEMS, "item_id", E)
    s["item_id"] = FieldSpec(FeatureKind.CATEGORICAL, Side.ITEM, N_ITEMS, "item_id", E)
    return s


def test_mgdspr_every_granularity_reaches_the_query_vector():
    torch.manual_seed(4)
    model = build_model(MGDSPRConfig(name="mgdspr", embedding_dim=E, output_dim=E, hidden=[],
                                     query_history="past_queries", behaviours=["session", "long_history"]),
                        mgdspr_schema()).eval()
    feats = {"user_id": torch.tensor([2, 3, 4]),
             "query_text": histories([[2, 3, 4], [5], [6, 7]]),
             "past_queries": histories([[8, 9], [10], [11, 12, 13]]),
             "session": histories([[2, 3], [4], [5, 6, 7]]),
             "long_history": histories([[8, 9, 10], [11], [12]])}
    assert model.units.names == ["unigram", "bigram", "sequence", "history", "mix"]
    with torch.no_grad():
        units = model.granularities(feats)  # [B, G, D]
        assert torch.allclose(units[:, -1], units[:, :-1].sum(1), atol=1e-5)  # mix = the sum
        base = model.fuse(units, feats)
        for g, name in enumerate(model.units.names):
            ablated = units.clone()
            ablated[:, g] = 0
            moved = (model.fuse(ablated, feats) - base).norm(dim=-1)
            assert (moved > 1e-4).all(), f"granularity {name} does not reach the query vector"
    # a one-token query's bigram unit falls back to its unigram unit
    assert torch.allclose(units[1, 1], units[1, 0])
    # the behaviour spans reach it too
    other = dict(feats, session=histories([[9, 9], [9], [9, 9, 9]]))
    with torch.no_grad():
        assert ((model.encode_query(other) - base).norm(dim=-1) > 1e-4).all()


def test_mgdspr_larger_temperature_gives_noisy_clicks_less_weight():
    """The paper's smoothing: with a small tau the softmax keeps pushing the clicks it cannot fit
    (noisy, off-query ones) while the well-fitted clicks stop contributing; a larger tau weighs all
    clicks more alike, so the model follows the majority (relevant) pattern instead of each
    user's noisy clicks."""
    from twotower.config import ObjectiveConfig
    from twotower.objectives.losses import in_batch_softmax

    torch.manual_seed(5)
    model = build_model(MGDSPRConfig(name="mgdspr", embedding_dim=E, output_dim=E, hidden=[]),
                        mgdspr_schema(False))
    b = 16
    items = torch.nn.functional.normalize(torch.randn(b, E), dim=-1)
    clean = torch.nn.functional.normalize(items[:12] + 0.1 * torch.randn(12, E), dim=-1)
    noisy = torch.nn.functional.normalize(torch.randn(4, E), dim=-1)  # clicks the query does not explain
    shares = []
    for tau in (0.5, 1.0, 4.0, 16.0):
        model.cfg.relevance_temperature = tau
        q = torch.cat([clean, noisy]).unsqueeze(1).requires_grad_(True)
        logits = model.logits(q, items.unsqueeze(1)) / ObjectiveConfig().temperature
        loss = in_batch_softmax(logits, torch.arange(b), None, None)
        loss.backward()
        g = q.grad[:, 0].norm(dim=-1)
        shares.append(float(g[12:].sum() / g.sum()))
    assert all(a > b for a, b in zip(shares, shares[1:])), shares
    assert shares[0] > 0.5 and shares[-1] < 0.4


def test_mgdspr_mixed_hard_negatives_sit_between_positive_and_hard_negative():
    from twotower.objectives.mgdspr import mgdspr_auxiliary_loss, mixed_hard_negatives

    torch.manual_seed(6)
    q = torch.nn.functional.normalize(torch.randn(8, E), dim=-1)
    i = torch.nn.functional.normalize(torch.randn(8, E), dim=-1)
    ids = torch.tensor([2, 3, 4, 5, 6, 7, 8, 2])  # rows 0 and 7 share an item: not each other's negative
    mixed = mixed_hard_negatives(q, i, ids, 3, (0.4, 0.8))
    assert mixed.shape == (8, 3, E)
    scores = (q @ i.T).masked_fill(ids[:, None] == ids[None, :], float("-inf"))
    hard = scores.topk(3, dim=1).indices
    to_pos = torch.einsum("bnd,bd->bn", mixed, i)
    to_hard = torch.einsum("bnd,bnd->bn", mixed, i[hard])
    assert (to_pos > torch.einsum("bnd,bd->bn", i[hard], i)).all()  # pulled toward the positive
    assert (to_hard > torch.einsum("bnd,bd->bn", i[hard], i) - 1e-6).all()
    assert not (hard == 7)[0].any() and not (hard == 0)[7].any()
    model = build_model(MGDSPRConfig(name="mgdspr", embedding_dim=E, output_dim=E, hidden=[],
                                     hard_negatives=3), mgdspr_schema(False))
    from twotower.types import Batch

    feats = {"user_id": torch.arange(2, 10), "query_text": torch.randint(2, 30, (8, 3)),
             "past_queries": torch.zeros(8, 1, dtype=torch.long)}
    batch = Batch(query=feats, item={"item_id": ids}, item_ids=ids)
    loss, logs = mgdspr_auxiliary_loss(model, model.encode_query(feats), model.encode_item(batch.item),
                                       batch, 0.05)
    assert loss > 0 and "mixed_negative_loss" in logs
    loss.backward()
    assert model.embedding.tables["item_id"].weight.grad.abs().sum() > 0


def test_causal_encoder_last_position_equals_the_full_causal_pass():
    """The last block computes only the last valid position: same state as running every
    position through every block and reading the last valid one."""
    from twotower.towers.attention import CausalEncoder

    torch.manual_seed(9)
    enc = CausalEncoder(E, max_len=6, blocks=2, heads=2).eval()
    x = torch.randn(3, 6, E)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2, [True] + [False] * 5])
    with torch.no_grad():
        out = enc(x, mask)
        h = x + enc.position.weight[:6]
        for block in enc.blocks:
            h = block(h, enc.causal[:6, :6])
        full = enc.norm(h)[torch.arange(3), mask.sum(1) - 1]
    torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5)
