"""Feature encoders fitted on the training log and saved in the run folder.

Every encoder turns one Arrow column into a NumPy array in one vectorised pass:

========== ============================== ==============================================
kind        input column                   output
========== ============================== ==============================================
categorical int or string                  int64 [B]   (0 padding, 1 out-of-vocabulary)
hashed      int or string                  int64 [B]   (1 for missing, else 2 + hash % n)
text        string                         int64 [B,L] word / char-3-gram hash ids
sequence    list<int|string> or "a b c"    int64 [B,L] vocabulary ids, most recent kept
dense       number                         float32 [B] standardised, missing -> 0
========== ============================== ==============================================

Unknown and missing values are never a crash: they go to the OOV slot and are counted.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from twotower.config import FeatureConfig, FeatureKind
from twotower.errors import DataError
from twotower.features.hashing import char_trigrams, hash_array, hash_strings, word_tokens
from twotower.features.padding import pad_ragged

PAD, OOV = 0, 1
FIRST_ID = 2  # index of the first real value in every vocabulary / hash space


class Vocabulary:
    """Values seen at least ``min_count`` times, most frequent first; index = 2 + rank."""

    def __init__(self, min_count: int = 1):
        self.min_count = min_count
        self.counts: Counter = Counter()
        self.values: list | None = None
        self.is_int: bool | None = None
        self._value_set: pa.Array | None = None

    def observe(self, flat: pa.Array) -> None:
        flat = _normalise_values(flat)
        if self.is_int is None and len(flat):
            self.is_int = pa.types.is_integer(flat.type)
        flat = self._cast(flat)
        vc = pc.value_counts(flat.drop_null())
        for value, count in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()):
            self.counts[value] += count

    def finish(self) -> None:
        kept = [(v, c) for v, c in self.counts.items() if c >= self.min_count]
        kept.sort(key=lambda vc: (-vc[1], vc[0]))
        self.values = [v for v, _ in kept]
        self.counts = Counter()

    def _cast(self, flat: pa.Array) -> pa.Array:
        target = pa.int64() if self.is_int else pa.string()
        if flat.type == target:
            return flat
        if self.is_int and not pa.types.is_integer(flat.type):
            # string ids for an integer vocabulary: compare as strings
            return flat.cast(pa.string())
        return flat.cast(target)

    @property
    def value_set(self) -> pa.Array:
        if self._value_set is None:
            assert self.values is not None, "vocabulary used before fit"
            self._value_set = pa.array(self.values, type=pa.int64() if self.is_int else pa.string())
        return self._value_set

    def lookup(self, flat: pa.Array) -> tuple[np.ndarray, int]:
        """Ids of ``flat`` values and the number that were unknown or missing."""
        flat = _normalise_values(flat)
        value_set = self.value_set
        flat = self._cast(flat)
        if flat.type != value_set.type:
            value_set = value_set.cast(flat.type)
        idx = pc.index_in(flat, value_set=value_set)
        out = np.asarray(idx.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
        unknown = out < 0
        out = np.where(unknown, OOV, out + FIRST_ID)
        return out, int(unknown.sum())

    def __len__(self) -> int:
        return len(self.values or [])

    @property
    def size(self) -> int:
        """Rows an embedding table needs: padding + OOV + values."""
        return len(self) + FIRST_ID

    def to_json(self) -> dict:
        return {"min_count": self.min_count, "is_int": bool(self.is_int), "values": self.values}

    @classmethod
    def from_json(cls, d: dict) -> "Vocabulary":
        v = cls(d["min_count"])
        v.is_int, v.values = d["is_int"], d["values"]
        return v


def _normalise_values(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Float ids (CSV columns with gaps) become int64; NaN becomes null."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_floating(arr.type):
        arr = pc.if_else(pc.is_nan(arr), None, arr)
        fractional = pc.not_equal(pc.floor(arr), arr)
        if pc.any(fractional).as_py():
            bad = arr.filter(fractional)
            raise DataError(f"{len(bad)} fractional value{'s' if len(bad) > 1 else ''} (e.g. "
                            f"{bad[0].as_py()}) in an id column: ids must be whole numbers or "
                            "strings (a float id would be truncated and merge different ids)")
        return arr.cast(pa.int64(), safe=False)
    if pa.types.is_dictionary(arr.type):
        return arr.cast(arr.type.value_type)
    if pa.types.is_large_string(arr.type):
        return arr.cast(pa.string())
    return arr


def _check_type(kind: FeatureKind, t: pa.DataType) -> str | None:
    """None when type ``t`` can feed a feature of this kind, else what was expected."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    is_id = pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t) \
        or pa.types.is_floating(t)
    if kind in (FeatureKind.CATEGORICAL, FeatureKind.HASHED):
        return None if is_id or pa.types.is_boolean(t) else "an integer or string id"
    if kind == FeatureKind.TEXT:
        return None if pa.types.is_string(t) or pa.types.is_large_string(t) else "text (string)"
    if kind == FeatureKind.SEQUENCE:
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return _check_type(FeatureKind.CATEGORICAL, t.value_type) and "a list of ids"
        return None if pa.types.is_string(t) or pa.types.is_large_string(t) \
            else "a list of ids (or space-separated ids)"
    if kind == FeatureKind.DENSE:
        return None if pa.types.is_integer(t) or pa.types.is_floating(t) or \
            pa.types.is_boolean(t) or pa.types.is_decimal(t) else "a number"
    raise AssertionError(kind)


class FeatureEncoder:
    """Base class: fit on chunks of one column, then encode chunks of it."""

    def __init__(self, cfg: FeatureConfig):
        self.cfg = cfg
        self.seen_rows = 0
        self.seen_missing = 0

    @property
    def name(self) -> str:
        return self.cfg.name

    def type_problem(self, t: pa.DataType) -> str | None:
        return _check_type(self.cfg.kind, t)

    def observe(self, column: pa.ChunkedArray) -> None:
        self.seen_rows += len(column)
        self.seen_missing += _missing(column)

    def finish(self) -> None:
        pass

    def encode(self, column: pa.ChunkedArray) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    @property
    def cardinality(self) -> int:
        """Rows of the embedding table this feature needs (0 for dense)."""
        return 0

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass


def _missing(column: pa.ChunkedArray | pa.Array) -> int:
    n = column.null_count
    if pa.types.is_floating(column.type):
        n += int(pc.sum(pc.is_nan(column).fill_null(False)).as_py() or 0)
    return n


class CategoricalEncoder(FeatureEncoder):
    def __init__(self, cfg: FeatureConfig, vocab: Vocabulary, owns_vocab: bool):
        super().__init__(cfg)
        self.vocab, self.owns_vocab = vocab, owns_vocab

    def observe(self, column):
        super().observe(column)
        self.vocab.observe(column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column)

    def encode(self, column):
        return self.vocab.lookup(column)

    @property
    def cardinality(self):
        return self.vocab.size


class SequenceEncoder(CategoricalEncoder):
    """Id lists padded/truncated to ``max_len``, keeping the most recent (last) ids."""

    @staticmethod
    def _as_list(column) -> pa.ListArray:
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            column = word_tokens(column)  # "12 7 99" -> ["12", "7", "99"]
        return pc.fill_null(column, pa.scalar([], type=column.type))

    def observe(self, column):
        FeatureEncoder.observe(self, column)
        self.vocab.observe(pc.list_flatten(self._as_list(column)))

    def encode(self, column):
        lists = self._as_list(column)
        ids, n_oov = self.vocab.lookup(pc.list_flatten(lists))
        lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
        return pad_ragged(ids, lengths, self.cfg.max_len, keep="last"), n_oov


class HashedEncoder(FeatureEncoder):
    def encode(self, column):
        h = hash_array(column, self.cfg.num_buckets, salt=_salt(self.name), offset=FIRST_ID)
        missing = h < 0
        h[missing] = OOV
        return h, int(missing.sum())

    @property
    def cardinality(self):
        return self.cfg.num_buckets + FIRST_ID


class TextEncoder(FeatureEncoder):
    """Word and/or character-3-gram hashing of free text (Que2Search's text channels)."""

    def encode(self, column):
        words = word_tokens(column)
        flat = pc.list_flatten(words)
        lengths = pc.list_value_length(words).to_numpy(zero_copy_only=False).astype(np.int64)
        per_word: list[np.ndarray] = []  # token ids of each word occurrence, per kind
        counts: list[np.ndarray] = []
        enc = pc.dictionary_encode(flat)
        uniques = enc.dictionary.to_pylist()
        word_idx = np.asarray(enc.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        salt = _salt(self.name)
        n = self.cfg.num_buckets
        if "word" in self.cfg.tokens:
            ids = (hash_strings(uniques, salt) % np.uint64(n)).astype(np.int64) + FIRST_ID
            per_word.append(ids[word_idx])
            counts.append(np.ones(len(word_idx), dtype=np.int64))
        if "char3" in self.cfg.tokens:
            # tri-grams of each distinct word (a loop over the vocabulary, not over rows)
            grams = [char_trigrams(u) for u in uniques]
            g_len = np.array([len(g) for g in grams], dtype=np.int64)
            g_ids = (hash_strings([t for g in grams for t in g], salt + 7919) % np.uint64(n)
                     ).astype(np.int64) + FIRST_ID
            g_start = np.concatenate([[0], np.cumsum(g_len)[:-1]]) if len(g_len) else g_len
            occ_len = g_len[word_idx]
            occ_start = np.repeat(g_start[word_idx], occ_len)
            within = np.arange(occ_len.sum()) - np.repeat(np.cumsum(occ_len) - occ_len, occ_len)
            per_word.append(g_ids[occ_start + within] if len(within) else within)
            counts.append(occ_len)
        # interleave kinds word by word: [word, its trigrams, next word, ...]
        occ_counts = np.sum(counts, axis=0) if counts else np.zeros(0, dtype=np.int64)
        if len(per_word) == 1:
            tokens = per_word[0]
        else:
            word_row = np.repeat(np.arange(len(word_idx)), counts[0])
            gram_row = np.repeat(np.arange(len(word_idx)), counts[1])
            order = np.argsort(np.concatenate([word_row * 2, gram_row * 2 + 1]), kind="stable")
            tokens = np.concatenate(per_word)[order]
        row_of_word = np.repeat(np.arange(len(lengths)), lengths)
        row_lengths = np.bincount(row_of_word, weights=occ_counts, minlength=len(lengths)).astype(np.int64)
        padded = pad_ragged(tokens, row_lengths, self.cfg.max_len, keep="first")
        return padded, int((lengths == 0).sum())

    @property
    def cardinality(self):
        return self.cfg.num_buckets + FIRST_ID


class DenseEncoder(FeatureEncoder):
    """Standardised with the training mean and standard deviation; missing values -> 0."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.sum = self.sumsq = 0.0
        self.count = 0
        self.mean, self.std = 0.0, 1.0

    def _floats(self, column) -> np.ndarray:
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        return np.asarray(column.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False))

    def observe(self, column):
        super().observe(column)
        x = self._floats(column)
        x = x[np.isfinite(x)]
        self.sum += float(x.sum())
        self.sumsq += float((x * x).sum())
        self.count += len(x)

    def finish(self):
        if self.count:
            self.mean = self.sum / self.count
            var = max(self.sumsq / self.count - self.mean ** 2, 0.0)
            self.std = float(np.sqrt(var)) or 1.0

    def encode(self, column):
        x = self._floats(column)
        bad = ~np.isfinite(x)
        z = np.where(bad, 0.0, (x - self.mean) / self.std).astype(np.float32)
        return z, int(bad.sum())

    def state(self):
        return {"mean": self.mean, "std": self.std}

    def load_state(self, state):
        self.mean, self.std = state["mean"], state["std"]


def _salt(name: str) -> int:
    return int(hash_strings([name])[0] % np.uint64(1 << 31))


def build_encoders(features: Iterable[FeatureConfig]) -> dict[str, FeatureEncoder]:
    """One encoder per feature; features with ``vocab_from`` share that feature's vocabulary."""
    features = list(features)
    by_name = {f.name: f for f in features}
    vocabs: dict[str, Vocabulary] = {}
    encoders: dict[str, FeatureEncoder] = {}
    for f in features:
        if f.kind in (FeatureKind.CATEGORICAL, FeatureKind.SEQUENCE):
            root = f.name
            while by_name[root].vocab_from is not None:
                root = by_name[root].vocab_from
            vocab = vocabs.setdefault(root, Vocabulary(by_name[root].min_count))
            cls = SequenceEncoder if f.kind == FeatureKind.SEQUENCE else CategoricalEncoder
            encoders[f.name] = cls(f, vocab, owns_vocab=root == f.name)
        elif f.kind == FeatureKind.HASHED:
            encoders[f.name] = HashedEncoder(f)
        elif f.kind == FeatureKind.TEXT:
            encoders[f.name] = TextEncoder(f)
        elif f.kind == FeatureKind.DENSE:
            encoders[f.name] = DenseEncoder(f)
    return encoders


def vocab_root(features: dict[str, FeatureConfig], name: str) -> str:
    """The feature whose vocabulary (and embedding table) ``name`` uses."""
    while features[name].vocab_from is not None:
        name = features[name].vocab_from
    return name


def encoder_state(enc: FeatureEncoder) -> dict[str, Any]:
    d: dict[str, Any] = {"state": enc.state()}
    if isinstance(enc, CategoricalEncoder) and enc.owns_vocab:
        d["vocab"] = enc.vocab.to_json()
    return d
