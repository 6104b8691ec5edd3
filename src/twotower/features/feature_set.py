"""All of a run's feature encoders: fitted once on the training log, saved as JSON."""
from __future__ import annotations

import json
from contextlib import contextmanager
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa

from twotower.config import FeatureConfig
from twotower.errors import ArtifactError, DataError
from twotower.features.encoders import (CategoricalEncoder, FeatureEncoder, Vocabulary,
                                        build_encoders, encoder_state, vocab_root)
from twotower.progress import progress
from twotower.run import FORMAT_VERSION, atomic_write_json
from twotower.types import FeatureKind, FieldSpec, Side

#: Encoded columns: feature name -> int64 [B] / int64 [B, L] / float32 [B]
Encoded = dict[str, np.ndarray]


class FeatureSet:
    """Fits, applies, saves and loads the encoders of every feature in the config."""

    def __init__(self, features: Iterable[FeatureConfig], item_id: str):
        self.configs = {f.name: f for f in features}
        self.item_id = item_id
        self.encoders: dict[str, FeatureEncoder] = build_encoders(self.configs.values())
        self.oov_counts: Counter = Counter()
        self.rows_encoded = 0
        #: rows left out of training, by reason (a label that is null / NaN ...)
        self.skipped: Counter = Counter()
        self.fitted = False

    # ---- which features feed which tower
    def names(self, side: Side) -> list[str]:
        return [n for n, f in self.configs.items() if f.side == side]

    @property
    def query_features(self) -> list[str]:
        return self.names(Side.QUERY)

    @property
    def item_column(self) -> str:
        """The column holding the raw item id (what exports and indexes key items by)."""
        return self.configs[self.item_id].source

    def columns(self, side: Side | None = None) -> list[str]:
        names = self.configs if side is None else self.names(side)
        return list(dict.fromkeys(self.configs[n].source for n in names))

    @property
    def num_items(self) -> int:
        """Rows of the item id vocabulary (padding and OOV included)."""
        return self.encoders[self.item_id].cardinality

    def check_schema(self, schema: pa.Schema, path: Path | str, side: Side | None = None) -> None:
        """Every feature column is present and of a usable type, else a DataError naming it."""
        names = self.configs if side is None else self.names(side)
        missing = [self.configs[n].source for n in names if self.configs[n].source not in schema.names]
        if missing:
            asked = "; ".join(f"{self.configs[n].source!r} (asked for by data.features: {n!r})"
                              for n in names if self.configs[n].source not in schema.names)
            raise DataError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {asked}; "
                            f"the file has: {', '.join(schema.names)}")
        for n in names:
            f = self.configs[n]
            problem = self.encoders[n].type_problem(schema.field(f.source).type)
            if problem:
                raise DataError(f"{path}: column {f.source!r} (feature {n!r}, kind "
                                f"{f.kind.value}) has type {schema.field(f.source).type}, "
                                f"expected {problem}")

    # ---- fitting
    def fit(self, chunks: Iterable[pa.Table], path: Path | str = "training data") -> "FeatureSet":
        """Fit every encoder on the training chunks (one streaming pass)."""
        seen_chunk = False
        for chunk in progress(chunks, desc="fitting features", unit="chunk"):
            seen_chunk = True
            for name, enc in self.encoders.items():
                with self._naming(name, path):
                    enc.observe(chunk[self.configs[name].source])
        if not seen_chunk:
            raise DataError(f"{path}: no training rows")
        for name, enc in self.encoders.items():
            if enc.seen_rows and enc.seen_missing == enc.seen_rows:
                raise DataError(f"{path}: column {self.configs[name].source!r} (feature {name!r}) "
                                "has no values: every row is null/NaN")
        for enc in self._vocab_owners():
            enc.vocab.finish()
        for enc in self.encoders.values():
            enc.finish()
        self.fitted = True
        return self

    def _vocab_owners(self) -> list[CategoricalEncoder]:
        return [e for e in self.encoders.values() if isinstance(e, CategoricalEncoder) and e.owns_vocab]

    # ---- encoding
    def encode(self, table: pa.Table, side: Side | None = None, count: bool = True) -> Encoded:
        """Encode the features of one side (or all) of ``table``; OOV values are counted."""
        names = self.configs if side is None else self.names(side)
        out: Encoded = {}
        for n in names:
            with self._naming(n):
                arr, n_oov = self.encoders[n].encode(table[self.configs[n].source])
            out[n] = arr
            if count and n_oov:
                self.oov_counts[n] += n_oov
        if count and side is None:  # whole rows (a log's); one side alone is not a row
            self.rows_encoded += table.num_rows
        return out

    @contextmanager
    def _naming(self, name: str, path: Path | str | None = None):
        """An encoder's DataError (e.g. a fractional id) gains the file, column and feature."""
        try:
            yield
        except DataError as err:
            where = f"{path}: " if path is not None else ""
            raise DataError(f"{where}column {self.configs[name].source!r} (feature {name!r}): "
                            f"{err}") from None

    def item_index(self, ids: pa.Array | list) -> tuple[np.ndarray, int]:
        """Encoded indices of raw item ids (OOV = 1) and how many were unknown."""
        vocab = self.encoders[self.item_id].vocab
        return vocab.lookup(pa.array(ids) if isinstance(ids, list) else ids)

    def report(self) -> dict:
        return {
            "rows_encoded": self.rows_encoded,
            "rows_skipped": {k: int(v) for k, v in sorted(self.skipped.items())},
            "oov": {n: int(c) for n, c in sorted(self.oov_counts.items())},
            "vocabulary_sizes": {n: len(e.vocab) for n, e in self.encoders.items()
                                 if isinstance(e, CategoricalEncoder) and e.owns_vocab},
        }

    # ---- persistence (JSON, never pickle)
    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, {
            "format_version": FORMAT_VERSION,
            "item_id": self.item_id,
            "features": [f.model_dump(mode="json") for f in self.configs.values()],
            "encoders": {n: encoder_state(e) for n, e in self.encoders.items()},
        })

    @classmethod
    def load(cls, path: str | Path) -> "FeatureSet":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
            fs = cls([FeatureConfig.model_validate(f) for f in d["features"]], d["item_id"])
            for n, enc in fs.encoders.items():
                st = d["encoders"][n]
                if isinstance(enc, CategoricalEncoder) and enc.owns_vocab:
                    loaded = Vocabulary.from_json(st["vocab"])
                    enc.vocab.min_count, enc.vocab.is_int = loaded.min_count, loaded.is_int
                    enc.vocab.values = loaded.values
                enc.load_state(st["state"])
        except FileNotFoundError:
            raise ArtifactError(f"{path}: fitted features not found (is this a run folder?)") from None
        except (KeyError, ValueError, TypeError) as err:
            raise ArtifactError(f"{path}: corrupt feature file ({err})") from None
        if d.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{path}: format version {d.get('format_version')} is not "
                                f"{FORMAT_VERSION}")
        fs.fitted = True
        return fs



def feature_schema(fs: FeatureSet, default_dim: int) -> dict[str, FieldSpec]:
    """The model-facing description of ``fs``: kind, side, table and size of every feature."""
    schema = {}
    for name, f in fs.configs.items():
        kind = f.kind
        table = vocab_root(fs.configs, name) if kind in (FeatureKind.CATEGORICAL,
                                                         FeatureKind.SEQUENCE) else name
        dim = fs.configs[table].embedding_dim or default_dim
        schema[name] = FieldSpec(kind, f.side, fs.encoders[name].cardinality, table, dim)
    return schema
