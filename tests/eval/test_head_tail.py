"""Head / tail split of the metrics (tail = bottom 80% of items by training frequency)."""
from __future__ import annotations

import numpy as np

from twotower.eval.metrics import head_tail_items, head_tail_metrics


def test_tail_is_the_bottom_80_percent_by_training_count():
    counts = np.array([50, 1, 1, 3, 7, 0, 2, 9, 4, 30])
    tail = head_tail_items(counts)
    assert tail.sum() == 8 and not tail[0] and not tail[9]


def test_metrics_are_split_by_the_targets_item_class():
    is_tail = np.array([False, True, True])
    ranks = np.array([0, 60, 3, 100])
    request = np.array([0, 1, 2, 3])
    items = np.array([0, 1, 2, 1])  # head target hit; tail targets: miss, hit, miss
    m = head_tail_metrics(ranks, request, items, is_tail, [10])
    assert m["head_hr@10"] == 1.0 and m["head_requests"] == 1
    assert np.isclose(m["tail_hr@10"], 1 / 3) and m["tail_requests"] == 3
