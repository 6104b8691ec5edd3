"""``twotower init LOG``: a commented run config scaffolded from a log's schema and a sample.

Each column is classified from its type, its name and the first ``SAMPLE_ROWS`` rows:

- the **item id**: ``--item-id``, else the first id-like column named like an item (item, ad,
  movie, product, doc, video, song, post, sku, ...);
- the **label**: a 0/1 column named like a click (click, label, clicked, is_click, purchase, ...);
- a **request / group column** (search_id, request_id, session_id, impression_id ...): not a
  feature (unique per request), it groups the holdout and the evaluation;
- a **time column** (timestamp, time, ts, date ...): offered as the time holdout (commented);
- **sequences**: list columns (a history of ids shares the item id's vocabulary);
- **text**: strings of more than ``TEXT_TOKENS`` words on average; other strings and integers are
  categorical ids; floats are dense numbers;
- the **side**: a column that has one value per item id in the sample is an item attribute
  (ad title, category, price); anything else describes the request (user, query, context).

The output is a starting point to read and edit: every choice carries a comment saying why.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from twotower.data.readers import TableSource
from twotower.errors import ConfigError, DataError

SAMPLE_ROWS = 100_000
TEXT_TOKENS = 1.5  # mean words per row above which a string column is text, not an id
#: hash buckets of a text feature: the presets' size (a 2**18-row table per text feature made
#: every Adam step update 8M+ parameters, 0.4 s a step on the simulator's log)
TEXT_BUCKETS = 50_000
ITEM_WORDS = ("item", "ad", "movie", "product", "doc", "video", "song", "track", "post", "sku",
              "article", "listing", "offer", "creative", "book")
LABEL_NAMES = ("click", "clicked", "is_click", "label", "y", "target", "purchase", "purchased",
               "conversion", "converted", "like", "liked", "watch", "engaged")
GROUP_WORDS = ("search", "request", "session", "impression", "page_view", "pageview", "query_log")
TIME_WORDS = ("timestamp", "time", "ts", "date", "datetime", "event_time", "created_at")
SKIP_NAMES = ("split", "position", "rank", "pos")


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]


def _is_id_name(name: str) -> bool:
    return _words(name)[-1:] in (["id"], ["ids"], ["key"]) or name.lower().endswith("id")


@dataclass
class Column:
    name: str
    type: pa.DataType
    distinct: int
    nulls: int
    mean_tokens: float = 0.0
    per_item: bool = False  # one value per item id in the sample
    binary: bool = False


def _profile(table: pa.Table, name: str) -> Column:
    col = table[name].combine_chunks()
    t = col.type
    distinct = len(pc.unique(col)) if not pa.types.is_list(t) else 0
    c = Column(name, t, distinct, col.null_count)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        words = pc.list_value_length(pc.split_pattern_regex(
            pc.utf8_trim_whitespace(pc.fill_null(col.cast(pa.string()), "")), r"\s+"))
        c.mean_tokens = float(np.mean(words.to_numpy(zero_copy_only=False))) if len(col) else 0.0
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        vals = pc.unique(col.drop_null().cast(pa.float64())).to_pylist()
        c.binary = bool(vals) and set(vals) <= {0.0, 1.0}
    return c


def _one_value_per_item(table: pa.Table, item: str, name: str) -> bool:
    if pa.types.is_list(table.schema.field(name).type):
        return False
    pairs = table.select([item, name]).group_by(item).aggregate([(name, "count_distinct")])
    counts = pairs[f"{name}_count_distinct"].to_numpy(zero_copy_only=False)
    return bool(len(counts)) and int(counts.max()) <= 1


def _pick_item_id(cols: dict[str, Column], given: str | None, path) -> str:
    if given is not None:
        if given not in cols:
            raise ConfigError(f"--item-id {given!r}: {path} has no such column; it has: "
                              f"{', '.join(cols)}")
        return given
    for c in cols.values():
        words = _words(c.name)
        if _is_id_name(c.name) and any(w in ITEM_WORDS for w in words[:-1] or words):
            return c.name
    raise ConfigError(f"{path}: no column looks like the item id (e.g. item_id, ad_id, movie_id); "
                      "name it with --item-id COLUMN")


def _pick_label(cols: dict[str, Column], given: str | None) -> str | None:
    if given is not None:
        return given
    for c in cols.values():
        if c.binary and (c.name.lower() in LABEL_NAMES or any(w in LABEL_NAMES for w in _words(c.name))):
            return c.name
    return None


def _pick_group(cols: dict[str, Column]) -> str | None:
    for c in cols.values():
        words = _words(c.name)
        if _is_id_name(c.name) and any(w in GROUP_WORDS for w in words):
            return c.name
    return None


def _pick_time(cols: dict[str, Column]) -> str | None:
    for c in cols.values():
        t = c.type
        if pa.types.is_timestamp(t) or pa.types.is_date(t):
            return c.name
        if (pa.types.is_integer(t) or pa.types.is_floating(t)) and (
                c.name.lower() in TIME_WORDS or any(w in TIME_WORDS for w in _words(c.name))):
            return c.name
    return None


def _user_column(cols: dict[str, Column]) -> str | None:
    return next((c.name for c in cols.values() if _is_id_name(c.name)
                 and any(w in ("user", "customer", "member", "visitor", "account") for w in _words(c.name))), None)


def _feature_line(c: Column, side: str, item_id: str, item_type: pa.DataType, rows: int) -> tuple[str, str]:
    """(YAML flow mapping, comment) of one feature."""
    t = c.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        value_t = t.value_type
        shares = (pa.types.is_integer(value_t) and pa.types.is_integer(item_type)) or value_t == item_type
        extra = f", vocab_from: {item_id}" if shares else ""
        return (f"{{name: {c.name}, side: {side}, kind: sequence{extra}, max_len: 50}}",
                f"list of {value_t} -> sequence" + (" sharing the item id's vocabulary" if shares else ""))
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        if c.mean_tokens > TEXT_TOKENS:
            return (f"{{name: {c.name}, side: {side}, kind: text, tokens: [word, char3], "
                    f"num_buckets: {TEXT_BUCKETS}, max_len: 32}}",
                    f"text: {c.mean_tokens:.1f} words per row")
        return (f"{{name: {c.name}, side: {side}}}", f"categorical: {c.distinct:,} distinct values")
    if pa.types.is_floating(t) and not (c.distinct <= 50 and c.name == item_id):
        return (f"{{name: {c.name}, side: {side}, kind: dense}}",
                f"dense number ({c.distinct:,} distinct), standardised")
    if c.distinct > 0.5 * rows and c.name != item_id and rows > 1000:
        buckets = min(1 << 18, 1 << max(10, (4 * c.distinct).bit_length()))
        return (f"{{name: {c.name}, side: {side}, kind: hashed, num_buckets: {buckets}}}",
                f"{c.distinct:,} distinct in {rows:,} rows: hashed, no vocabulary")
    return (f"{{name: {c.name}, side: {side}}}", f"categorical id: {c.distinct:,} distinct values")


def _items_line(src: TableSource, item: str, item_columns: list[str], base: Path) -> str:
    """``items:`` pointing at a table beside the log that has the item id and every item
    column (the corpus: items never shown can be retrieved too), else a commented hint."""
    for path in sorted(Path(src.path).parent.iterdir()):
        if path == Path(src.path) or path.suffix.lower() not in (".parquet", ".pq", ".csv", ".tsv"):
            continue
        try:
            other = TableSource(path)
        except DataError:
            continue
        if all(c in other.columns for c in [item, *item_columns]):
            return (f"  items: {_relative(path, base)}        # found beside the log: every "
                    "item in it can be retrieved")
    return "  # items: items.parquet          # the corpus to retrieve from (default: items seen in train)"


def _relative(path: Path, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(base.resolve()))
    except ValueError:
        return str(Path(path).resolve())


def scaffold_config(log: str | Path, out: str | Path | None = None, item_id: str | None = None,
                    label: str | None = None) -> str:
    """The text of a commented run config for ``log`` (paths relative to ``out``'s folder)."""
    src = TableSource(log)
    sample = next(iter(src.iter_chunks(None, SAMPLE_ROWS)), None)
    if sample is None or sample.num_rows == 0:
        raise DataError(f"{src.path}: the file has no rows to scaffold a config from")
    sample = sample.slice(0, SAMPLE_ROWS)
    rows = sample.num_rows
    cols = {n: _profile(sample, n) for n in sample.column_names}
    item = _pick_item_id(cols, item_id, src.path)
    lab = _pick_label(cols, label)
    if lab is not None and lab not in cols:
        raise ConfigError(f"--label {lab!r}: {src.path} has no such column")
    group = _pick_group(cols)
    time_col = _pick_time(cols)
    user = _user_column(cols)
    split = "split" if "split" in cols and pa.types.is_string(cols["split"].type) else None
    skipped = {n: why for n, why in ((lab, "the label"), (group, "the request id: groups the "
                                                                  "holdout and the evaluation"),
                                     (time_col, "a time column: see the holdout above"),
                                     (split, "the split column"))
               if n}
    skipped.update({n: "a display position: a bias of the page, not of the user or item"
                    for n in cols if n.lower() in SKIP_NAMES and n not in skipped})
    features: list[tuple[str, str]] = []
    item_columns: list[str] = []
    for name, c in cols.items():
        if name in skipped:
            continue
        side = "item" if name == item or _one_value_per_item(sample, item, name) else "query"
        if side == "item":
            item_columns.append(name)
        features.append(_feature_line(c, side, item, cols[item].type, rows))
    if not any("side: query" in f for f, _ in features):
        raise DataError(f"{src.path}: every column looks like an item attribute (one value per "
                        f"{item!r}); a two-tower model needs request columns (user, query, context)")
    base = Path(out).parent if out is not None else Path(".")
    train_path = _relative(src.path, base)
    holdout_by = group or user
    positives = (int(pc.sum(sample[lab].cast(pa.float64())).as_py() or 0) if lab else rows)
    batch = 1024
    while batch > 32 and batch * 10 > max(positives, 1):
        batch //= 2
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(src.path).stem) or "run"
    lines = [
        f"# Run config scaffolded by `twotower init {src.path}` from {rows:,} sampled rows.",
        "# Read every line: sides and kinds are guesses from names, types and the sample.",
        f"name: {name}                       # the run folder: runs/{name}",
        "data:",
        f"  train: {train_path}",
        _items_line(src, item, item_columns, base),
        f"  item_id: {item}",
    ]
    if lab:
        lines.append(f"  label: {lab}                   # 1 = positive, 0 = shown but not engaged")
        lines.append("                                  # (softmax objectives train on label > 0 rows only)")
    else:
        lines.append("  # label: click                # none found: every row is a positive interaction")
    lines.append("  holdout:                       # rows held out for validation / test")
    lines.append("    valid: 0.1")
    lines.append("    test: 0.1")
    if holdout_by:
        why = "a request" if holdout_by == group else "a user"
        lines.append(f"    group_by: {holdout_by}           # every row of {why} on one side")
        if time_col:
            lines.append(f"    # time: {time_col}            # or: hold out the latest rows (drop group_by)")
    elif time_col:
        lines.append(f"    time: {time_col}               # the latest rows are held out")
    lines.append("    seed: 0")
    if split:
        lines.append(f"  # split_column: {split}          # or your own train / valid / test column "
                     "(drop holdout)")
    lines.append("  features:")
    for f, why in features:
        lines.append(f"    - {f}    # {why}")
    for n, why in skipped.items():
        lines.append(f"    # not a feature: {n} ({why})")
    lines += [
        "model: {name: dssm, embedding_dim: 32, hidden: [128], output_dim: 32}",
        "objective: {name: in_batch_softmax, temperature: 0.05, logq_correction: true}   # or mixed_negatives"
        + (", pointwise_bce" if lab else ""),
        f"train: {{epochs: 5, batch_size: {batch}, lr: 0.003, threads: 1}}   "
        f"# {positives:,} training rows in the sample: {positives // batch:,} batches per epoch",
        "eval:",
        "  ks: [10, 50]",
        "  metric: recall@50              # early stopping on the validation split",
    ]
    if group:
        lines.append(f"  group_by: {group}            # one ranking per request: its positives are the targets")
    if user:
        lines.append(f"  # exclude_seen_by: {user}     # drop a user's training items from their ranking")
    return "\n".join(lines) + "\n"


def write_scaffold(log: str | Path, out: str | Path, item_id: str | None = None,
                   label: str | None = None, force: bool = False) -> Path:
    from twotower.config import load_config
    from twotower.run import atomic_write_text

    out = Path(out)
    if out.exists() and not force:
        raise ConfigError(f"{out} already exists: pass --force to replace it, or -o another name")
    text = scaffold_config(log, out, item_id, label)
    atomic_write_text(out, text)
    load_config(out)  # what we wrote must be a valid config
    return out
