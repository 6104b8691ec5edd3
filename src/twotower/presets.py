"""Ready-made run configs for the built-in data (the demo, the benchmarks, ``examples/``)."""
from __future__ import annotations

from pathlib import Path

from twotower.config import RunConfig, validate_config


def simulator_config(data_dir: str | Path, run_dir: str | Path, **sections) -> RunConfig:
    """DSSM on the sponsored-search simulator's impressions: one request per search, its clicked
    ads are the targets; query tower = user id + query text, ad tower = ad id + title + category
    + advertiser."""
    data_dir = Path(data_dir)
    raw = {
        "name": "simulator",
        "run_dir": str(run_dir),
        "data": {
            "train": str(data_dir / "impressions.parquet"),
            "items": str(data_dir / "ads.parquet"),
            "split_column": "split",
            "item_id": "ad_id",
            "label": "click",
            "features": [
                {"name": "user_id", "side": "query"},
                {"name": "query_text", "side": "query", "kind": "text",
                 "tokens": ["word", "char3"], "num_buckets": 50_000, "max_len": 32},
                {"name": "ad_id", "side": "item"},
                {"name": "ad_title", "side": "item", "kind": "text",
                 "tokens": ["word", "char3"], "num_buckets": 50_000, "max_len": 48},
                {"name": "ad_category", "side": "item"},
                {"name": "advertiser_id", "side": "item"},
            ],
        },
        "model": {"name": "dssm", "embedding_dim": 32, "hidden": [128], "output_dim": 32},
        "objective": {"temperature": 0.05},
        "train": {"epochs": 5, "batch_size": 512, "lr": 0.003, "checkpoint_every": 2000,
                  "early_stopping_patience": 2},
        "eval": {"ks": [10, 50, 100], "group_by": "search_id", "metric": "recall@50"},
    }
    return validate_config(_merge(raw, sections), "simulator preset")


def mobius_simulator_config(data_dir: str | Path, run_dir: str | Path, **sections) -> RunConfig:
    """MOBIUS (3 x 32 vectors, click/unclick/bad) on the simulator's impressions with the lexical
    teacher over query text and ad title; BRW = bid from the ad table."""
    raw = simulator_config(data_dir, run_dir).model_dump(mode="json")
    raw["name"] = "mobius"
    raw["model"] = {"name": "mobius", "embedding_dim": 32, "hidden": [128], "output_dim": 32,
                    "num_vectors": 3}
    # defaults chosen with bench/mobius.py (figures: README, MOBIUS): low relevance = the 90% lowest
    # teacher scores of the cross join (lexical: no query word in the ad; a fixed 0.5 also mines
    # partial matches that are truly relevant), a 20-step warm-up then mining, 2048 bad cases per
    # batch at weight 3 (more relevant ads in the top 10 than 512), 10 epochs; one torch thread
    # (small model).
    raw["objective"] = {"name": "mobius", "temperature": 0.1, "mobius": {"teacher": "lexical", "low_relevance_share": 0.9,
                                                     "warmup_epochs": 0, "warmup_steps": 20,
                                                     "max_bad_per_batch": 2048, "bad_weight": 3.0}}
    raw["train"] = {**raw["train"], "epochs": 10, "early_stopping_patience": None, "threads": 1}
    return validate_config(_merge(raw, sections), "mobius simulator preset")


#: model of the MovieLens preset by size. "fast" (the default): 32-d fields into a linear tower, the
#: fastest DSSM that clears BENCHMARK.md §1's quality bar; "full": 64-d fields, a 256-unit hidden
#: layer and 64-d output, higher HR@50 at about half the training speed (README, ML-100K results).
MOVIELENS_MODELS = {
    "fast": {"name": "dssm", "embedding_dim": 32, "hidden": [], "output_dim": 32},
    "full": {"name": "dssm", "embedding_dim": 64, "hidden": [256], "output_dim": 64},
}


#: training of the MovieLens preset by size. "fast": batches of 4096 whose in-batch softmax runs
#: over blocks of 1024 rows (1023 negatives per positive, as at batch 1024), so the per-step cost
#: of the optimiser and of ~300 small ops is shared by 4x the examples: more positives/s than
#: batch 1024 at the same HR@50 (bench/ml100k.py, README). "full": plain batches of 1024.
MOVIELENS_TRAINING = {
    "fast": {"train": {"batch_size": 4096, "lr": 0.006},
             "objective": {"temperature": 0.05, "in_batch_block": 1024}},
    "full": {"train": {"batch_size": 1024, "lr": 0.003}, "objective": {"temperature": 0.05}},
}
#: items of watch history pooled into the user tower, by size. 20 for "fast": higher validation
#: HR@50 than 50 (README) and less pooling work per example.
MOVIELENS_HISTORY = {"fast": 20, "full": 50}


def movielens_config(data_dir: str | Path, run_dir: str | Path, size: str = "fast",
                     history_len: int | None = None, **sections) -> RunConfig:
    """DSSM with history pooling on MovieLens (``prepare_movielens`` output), BENCHMARK.md §1;
    ``size`` picks the model, training and history length ("fast" or "full"); ``history_len``
    overrides the number of history items pooled."""
    if size not in MOVIELENS_MODELS:
        from twotower.errors import ConfigError

        raise ConfigError(f"movielens preset size {size!r}: expected one of "
                          f"{', '.join(MOVIELENS_MODELS)}")
    data_dir = Path(data_dir)
    raw = {
        "name": "movielens",
        "run_dir": str(run_dir),
        "data": {
            "train": str(data_dir / "interactions.parquet"),
            "items": str(data_dir / "items.parquet"),
            "split_column": "split",
            "item_id": "item_id",
            "features": [
                {"name": "user_id", "side": "query"},
                {"name": "history", "side": "query", "kind": "sequence", "vocab_from": "item_id",
                 "max_len": history_len or MOVIELENS_HISTORY[size]},
                {"name": "gender", "side": "query"},
                {"name": "age", "side": "query"},
                {"name": "occupation", "side": "query"},
                {"name": "item_id", "side": "item"},
                {"name": "genres", "side": "item", "kind": "sequence", "max_len": 6},
            ],
        },
        "model": dict(MOVIELENS_MODELS[size]),
        "objective": dict(MOVIELENS_TRAINING[size]["objective"]),
        "train": {"epochs": 20, **MOVIELENS_TRAINING[size]["train"], "checkpoint_every": 100_000},
        "eval": {"ks": [10, 50], "exclude_seen_by": "user_id", "metric": "hr@50"},
    }
    return validate_config(_merge(raw, sections), "movielens preset")


def _merge(base: dict, update: dict) -> dict:
    from twotower.config import merge

    return merge(base, update)
