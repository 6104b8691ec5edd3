"""Tiny synthetic schema and encoded log covering every feature kind on both sides.

Query side: user_id (categorical), history (sequence sharing the item id's table), query_text (text),
user_score (dense). Item side: item_id (categorical), tags (sequence), title (text), price (dense).
Each user prefers a few items (planted signal), so a model can learn something in a few steps.
"""
from __future__ import annotations

import numpy as np

from twotower.config import FeatureKind
from twotower.features.dataset import EncodedLog
from twotower.types import FieldSpec, Side

N_USERS, N_ITEMS, N_TAGS, N_WORDS = 40, 30, 12, 50
DIM = 8


def tiny_schema() -> dict[str, FieldSpec]:
    C, S, T, D = FeatureKind.CATEGORICAL, FeatureKind.SEQUENCE, FeatureKind.TEXT, FeatureKind.DENSE
    q, i = Side.QUERY, Side.ITEM
    return {
        "user_id": FieldSpec(C, q, N_USERS + 2, "user_id", DIM),
        "history": FieldSpec(S, q, N_ITEMS + 2, "item_id", DIM),
        "query_text": FieldSpec(T, q, N_WORDS + 2, "query_text", 6),
        "user_score": FieldSpec(D, q, 0, "user_score", 4),
        "item_id": FieldSpec(C, i, N_ITEMS + 2, "item_id", DIM),
        "tags": FieldSpec(S, i, N_TAGS + 2, "tags", DIM),
        "title": FieldSpec(T, i, N_WORDS + 2, "title", 6),
        "price": FieldSpec(D, i, 0, "price", 4),
    }


def item_table(seed: int = 0) -> dict[str, np.ndarray]:
    """Encoded features of every item (row j = item index j + 2)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(N_ITEMS, dtype=np.int64) + 2
    tags = rng.integers(2, N_TAGS + 2, size=(N_ITEMS, 3)).astype(np.int64)
    tags[:, 2] = 0  # padding
    title = rng.integers(2, N_WORDS + 2, size=(N_ITEMS, 5)).astype(np.int64)
    price = rng.normal(size=N_ITEMS).astype(np.float32)
    return {"item_id": ids, "tags": tags, "title": title, "price": price}


def tiny_log(rows: int = 512, negatives: bool = False, seed: int = 0) -> EncodedLog:
    """Clicked (user, item) rows; with ``negatives`` half the rows are unclicked random items."""
    rng = np.random.default_rng(seed)
    items = item_table(seed)
    users = rng.integers(0, N_USERS, size=rows)
    liked = (users[:, None] * 3 + np.arange(3)[None, :]) % N_ITEMS  # 3 favourite items per user
    item = liked[np.arange(rows), rng.integers(0, 3, size=rows)]
    label = np.ones(rows, dtype=np.float32)
    if negatives:
        neg = rng.random(rows) < 0.5
        item = np.where(neg, rng.integers(0, N_ITEMS, size=rows), item)
        label = (~neg).astype(np.float32)
    history = (liked + 2).astype(np.int64)
    history[rng.random(rows) < 0.3, 2] = 0
    query = {
        "user_id": (users + 2).astype(np.int64),
        "history": np.concatenate([history, np.zeros((rows, 2), np.int64)], axis=1),
        "query_text": rng.integers(2, N_WORDS + 2, size=(rows, 4)).astype(np.int64),
        "user_score": rng.normal(size=rows).astype(np.float32),
    }
    item_feats = {k: v[item] for k, v in items.items()}
    return EncodedLog(query, item_feats, (item + 2).astype(np.int64), label, None)


def small_model_config(name: str, **extra):
    from twotower.models import model_config_class

    return model_config_class(name).model_validate(
        {"name": name, "embedding_dim": DIM, "hidden": [16], "output_dim": DIM, **extra})
