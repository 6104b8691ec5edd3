"""MovieLens loader (ML-100K, ML-1M, and RecBole's tab-separated copy) with the leave-one-out split.

BENCHMARK.md §1: each user's interactions sorted by (timestamp, item id) — many share a second,
so the item id makes the order deterministic; the last one is the test item, the second-last the
validation item, the rest train. Every row carries ``history``: the user's previous items (most
recent last), so a user tower can pool what the user watched before.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from twotower.data.readers import write_parquet
from twotower.errors import DataError

GENRES_100K = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
               "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
               "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def _read_delimited(path: Path, names: list[str], delimiter: str, encoding: str = "latin-1") -> pa.Table:
    if delimiter == "::":  # ML-1M: arrow's parser takes one character; '::' -> '\x1f'
        text = path.read_bytes().decode(encoding).replace("::", "\x1f")
        import io

        return pacsv.read_csv(io.BytesIO(text.encode()), read_options=pacsv.ReadOptions(column_names=names),
                              parse_options=pacsv.ParseOptions(delimiter="\x1f", quote_char=False))
    return pacsv.read_csv(path, read_options=pacsv.ReadOptions(column_names=names, encoding=encoding),
                          parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=False))


def load_movielens(path: str | Path) -> tuple[pa.Table, pa.Table, pa.Table | None]:
    """(ratings[user_id, item_id, rating, timestamp], items[item_id, title, genres], users | None).

    ``path`` is a folder holding ``u.data`` (ML-100K), ``ratings.dat`` (ML-1M) or
    ``ml-100k.inter`` (RecBole's copy, as in ``shared/data/ml-100k``).
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: MovieLens folder not found")
    if (path / "u.data").is_file():
        ratings = _read_delimited(path / "u.data", ["user_id", "item_id", "rating", "timestamp"], "\t")
        raw = _read_delimited(path / "u.item", ["item_id", "title", "date", "video", "url"] + GENRES_100K, "|")
        flags = np.stack([raw[g].to_numpy() for g in GENRES_100K], axis=1).astype(bool)
        genres = [" ".join(g for g, f in zip(GENRES_100K, row) if f) for row in flags]
        items = pa.table({"item_id": raw["item_id"], "title": raw["title"], "genres": genres})
        users = _read_delimited(path / "u.user", ["user_id", "age", "gender", "occupation", "zip_code"], "|")
    elif (path / "ratings.dat").is_file():
        ratings = _read_delimited(path / "ratings.dat", ["user_id", "item_id", "rating", "timestamp"], "::")
        raw = _read_delimited(path / "movies.dat", ["item_id", "title", "genres"], "::")
        items = pa.table({"item_id": raw["item_id"], "title": raw["title"],
                          "genres": [g.replace("|", " ") for g in raw["genres"].to_pylist()]})
        users = (_read_delimited(path / "users.dat", ["user_id", "gender", "age", "occupation", "zip_code"], "::")
                 if (path / "users.dat").is_file() else None)
    else:
        inter = sorted(path.glob("*.inter"))
        if not inter:
            raise DataError(f"{path}: no MovieLens files (u.data, ratings.dat or *.inter)")
        read = lambda p: pacsv.read_csv(p, parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False))  # noqa: E731
        strip = lambda t: t.rename_columns([c.split(":")[0] for c in t.column_names])  # noqa: E731
        r = strip(read(inter[0]))
        ratings = pa.table({"user_id": r["user_id"].cast(pa.int64()), "item_id": r["item_id"].cast(pa.int64()),
                            "rating": r["rating"].cast(pa.float32()), "timestamp": r["timestamp"].cast(pa.int64())})
        item_file = inter[0].with_suffix(".item")
        if item_file.is_file():
            it = strip(read(item_file))
            items = pa.table({"item_id": it["item_id"].cast(pa.int64()),
                              "title": it["movie_title"].cast(pa.string()),
                              "genres": it["class"].cast(pa.string())})
        else:
            items = pa.table({"item_id": pa.array(np.unique(ratings["item_id"].to_numpy()))})
        user_file = inter[0].with_suffix(".user")
        users = strip(read(user_file)) if user_file.is_file() else None
        if users is not None:
            users = users.set_column(0, "user_id", users["user_id"].cast(pa.int64()))
    if ratings.num_rows == 0:
        raise DataError(f"{path}: no ratings")
    return ratings, items, users


def _ranges(begin: np.ndarray, end: np.ndarray, values: np.ndarray) -> pa.Array:
    """list<int64> array whose row r holds values[begin[r]:end[r]] (vectorised)."""
    lengths = np.maximum(end - begin, 0)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
    src = np.repeat(begin, lengths) + within
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values[src])).cast(pa.list_(pa.int64()))


def cut_sessions(user: np.ndarray, item: np.ndarray, ts: np.ndarray, gap: int = 3600,
                 session_len: int = 10, long_len: int = 50) -> tuple[pa.Array, pa.Array]:
    """SDM's short- and long-term behaviours of every row of a (user, timestamp)-sorted log.

    A new session starts at a user's first interaction and wherever the time since the previous
    one exceeds ``gap`` seconds. ``session`` of row r = the items of the latest session before r
    (at most ``session_len``, most recent last); ``long_history`` = the ``long_len`` items before
    that window.
    """
    n = len(user)
    idx = np.arange(n)
    first = np.concatenate([[True], user[1:] != user[:-1]]) if n else np.zeros(0, bool)
    new = first | np.concatenate([[True], np.diff(ts) > gap]) if n else first
    sess_start = np.maximum.accumulate(np.where(new, idx, 0)) if n else idx
    user_start = np.maximum.accumulate(np.where(first, idx, 0)) if n else idx
    prev = np.maximum(idx - 1, 0)
    has_prev = ~first
    s_end = idx
    s_begin = np.where(has_prev, np.maximum(sess_start[prev], idx - session_len), idx)
    l_begin = np.maximum(user_start, s_begin - long_len)
    return _ranges(s_begin, s_end, item), _ranges(l_begin, s_begin, item)


def leave_one_out(ratings: pa.Table, history_len: int = 50, session_gap: int = 3600,
                  session_len: int = 10, long_len: int = 50) -> pa.Table:
    """Sort each user's interactions by (timestamp, item id); label the last 'test', the
    second-last 'valid', the rest 'train'; attach each row's history of previous items (and
    their timestamps, ``history_ts``), and SDM's ``session`` / ``long_history`` (``cut_sessions``)."""
    user = ratings["user_id"].to_numpy().astype(np.int64)
    item = ratings["item_id"].to_numpy().astype(np.int64)
    ts = ratings["timestamp"].to_numpy().astype(np.int64)
    order = np.lexsort((item, ts, user))
    user, item, ts = user[order], item[order], ts[order]
    n = len(user)
    starts = np.concatenate([[0], np.flatnonzero(user[1:] != user[:-1]) + 1])
    lengths = np.diff(np.concatenate([starts, [n]]))
    pos = np.arange(n) - np.repeat(starts, lengths)  # position within the user's sequence
    from_end = np.repeat(lengths, lengths) - 1 - pos
    split = np.where(from_end == 0, "test", np.where(from_end == 1, "valid", "train"))
    split = np.where(lengths.repeat(lengths) < 3, "train", split)  # too short to hold out
    # history of row r = the user's items at positions [pos - history_len, pos)
    hist_len = np.minimum(pos, history_len)
    offsets = np.concatenate([[0], np.cumsum(hist_len)]).astype(np.int64)
    within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], hist_len)
    src = np.repeat(np.arange(n) - hist_len, hist_len) + within
    history = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(item[src]))
    history_ts = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(ts[src]))
    cols = {"user_id": user, "item_id": item, "timestamp": ts, "split": split,
            "history": history.cast(pa.list_(pa.int64())),
            # timestamps of the history items (aligned with `history`), for session models (SDM)
            "history_ts": history_ts.cast(pa.list_(pa.int64()))}
    session, long_history = cut_sessions(user, item, ts, session_gap, session_len, long_len)
    cols["session"], cols["long_history"] = session, long_history
    for extra in ("rating",):
        if extra in ratings.column_names:
            cols[extra] = ratings[extra].to_numpy()[order]
    return pa.table(cols)


def prepare_movielens(src: str | Path, out_dir: str | Path, history_len: int = 50,
                      session_gap: int = 3600, session_len: int = 10,
                      long_len: int = 50) -> dict[str, Path]:
    """Write ``interactions.parquet`` (with split, history and user features) and
    ``items.parquet`` for a run config; returns their paths. Sessions (SDM) are cut where
    consecutive interactions are more than ``session_gap`` seconds apart."""
    ratings, items, users = load_movielens(src)
    log = leave_one_out(ratings, history_len, session_gap, session_len, long_len)
    if users is not None:
        u = {c: users[c].to_pylist() for c in users.column_names}
        index = {uid: i for i, uid in enumerate(u["user_id"])}
        rows = np.array([index.get(x, -1) for x in np.unique(log["user_id"].to_numpy())])
        lookup = dict(zip(np.unique(log["user_id"].to_numpy()).tolist(), rows.tolist()))
        ridx = np.array([lookup[x] for x in log["user_id"].to_numpy().tolist()])
        for c in ("gender", "age", "occupation"):
            if c in u:
                vals = np.array([str(v) for v in u[c]] + ["unknown"], dtype=object)
                log = log.append_column(c, pa.array(vals[ridx], type=pa.string()))
    # item side features on every row (the item tower reads them from the log)
    if "genres" in items.column_names:
        g = dict(zip(items["item_id"].to_pylist(), items["genres"].to_pylist()))
        log = log.append_column("genres", pa.array([g.get(i, "") or "" for i in log["item_id"].to_pylist()]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {"interactions": write_parquet(log, out / "interactions.parquet"),
            "items": write_parquet(items, out / "items.parquet")}
