"""The fast bad-case mining: lazy teacher, key selection, hashed dedup, cross-join blocks."""
from __future__ import annotations

import torch

from twotower.config import MobiusObjectiveConfig
from twotower.mobius.augment import dedup_rows
from twotower.mobius.sampler import largest_keys, sample_bad_cases_lazily, sampling_keys
from twotower.mobius.task import AD_KEY, QUERY_KEY, MobiusTask
from twotower.mobius.teachers import LexicalTeacher
from twotower.models import build_model
from twotower.models.mobius import MobiusConfig
from twotower.types import Batch, FieldSpec


def test_lazy_sampling_draws_what_eager_filtering_would():
    """Same keys -> the lazy walk keeps exactly the cap largest keys among the low, unexcluded
    pairs (the eager algorithm), while the teacher sees far fewer pairs than the cross join."""
    g = torch.Generator().manual_seed(3)
    ctr = torch.rand(50_000, generator=g)
    low = torch.rand(50_000, generator=g) < 0.7
    excluded = torch.rand(50_000, generator=g) < 0.05
    asked = []

    def is_low(p):
        asked.append(len(p))
        return low[p]

    state = torch.Generator().manual_seed(9)
    pick, scored = sample_bad_cases_lazily(ctr, excluded, 300, is_low, 0.5, state)
    keys = sampling_keys(ctr, 0.5, torch.Generator().manual_seed(9))
    keys[~low | excluded] = -float("inf")
    eager = keys.topk(300).indices
    assert torch.equal(pick, eager)
    assert scored == sum(asked[-1:]) and scored < 5_000  # the teacher saw < 10% of the pairs
    # too few low pairs: every available pair is looked at, all the low ones returned
    few = torch.zeros(50_000, dtype=torch.bool)
    few[:7] = True
    pick, scored = sample_bad_cases_lazily(ctr, excluded, 300, lambda p: few[p], 1.0, g)
    assert sorted(pick.tolist()) == [i for i in range(7) if not excluded[i]]
    assert scored == int((~excluded).sum())


def test_largest_keys_is_a_sorted_prefix_of_the_key_order():
    keys = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    for k in (1, 100, 5_000, 150_000):
        top = largest_keys(keys, k)
        assert len(top) >= k
        assert len(set(top.tolist())) == len(top)  # (float32 ties: compare the keys themselves)
        assert torch.equal(keys[top], keys.sort(descending=True).values[:len(top)])


def test_hashed_dedup_equals_exact_rows_even_on_a_collision():
    g = torch.Generator().manual_seed(1)
    feats = {"u": torch.randint(0, 5, (400,), generator=g),
             "t": torch.randint(0, 3, (400, 4), generator=g), "x": torch.rand(400, 1) > 2}
    first, inv = dedup_rows(feats)
    codes = torch.cat([feats["t"], feats["u"][:, None], feats["x"].long()], 1)
    _, ref = torch.unique(codes, dim=0, return_inverse=True)
    # same grouping as the exact lexicographic unique (up to the group numbering)
    assert len(first) == int(ref.max()) + 1
    assert torch.equal(ref[first][inv], ref)
    import twotower.mobius.augment as aug

    saved = aug._HASH
    try:  # every multiplier 0: all rows hash alike, the check falls back to the exact sort
        aug._HASH = torch.zeros_like(saved)
        first0, inv0 = dedup_rows(feats)
        assert torch.equal(ref[first0][inv0], ref)
    finally:
        aug._HASH = saved


def test_cross_join_blocks_never_pair_rows_of_different_blocks():
    schema = {"user_id": FieldSpec("categorical", "query", 40, "user_id", 8),
              "ad_id": FieldSpec("categorical", "item", 40, "ad_id", 8)}
    model = build_model(MobiusConfig(embedding_dim=8, hidden=[16], output_dim=8), schema)
    teacher = LexicalTeacher()
    teacher.prepare([f"q{i}" for i in range(8)], [f"a{i}" for i in range(8)])  # nothing shared
    ids = torch.arange(2, 18)
    batch = Batch({"user_id": ids}, {"ad_id": ids.flip(0)}, ids.flip(0),
                  label=torch.ones(16), extra={QUERY_KEY: ids % 8, AD_KEY: ids % 8})
    task = MobiusTask(MobiusObjectiveConfig(max_bad_per_batch=1000, cross_join_block=4),
                      teacher, 0.5)
    q, i = model.encode_query(batch.query), model.encode_item(batch.item)
    bad, logs = task.mine(model, batch, q, i)
    assert logs["pairs"] == 4 * 16  # four 4 x 4 cross joins, not one 16 x 16
    assert bad.shape == (4 * 12, 3)  # every unobserved pair of each block (none relevant)
    # each bad case is the class logits of a (query row, ad row) pair of one block, not observed
    full = model.class_logits_matrix(q, i).reshape(256, 3)  # [16 * 16, 3]
    pair = torch.cdist(bad.detach(), full.detach()).argmin(1)
    assert torch.allclose(bad, full[pair], atol=1e-5)
    a, b = pair // 16, pair % 16
    assert torch.equal(a // 4, b // 4) and bool((a != b).all())
    bad.sum().backward()  # the bad logits carry the gradient to both towers
    assert all(p.grad is not None for p in model.parameters())
    whole = MobiusTask(MobiusObjectiveConfig(max_bad_per_batch=1000), teacher, 0.5)
    assert whole.mine(model, batch, q, i)[1]["pairs"] == 256
