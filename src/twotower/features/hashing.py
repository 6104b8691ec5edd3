"""Stable, vectorised hashing of ids and text tokens.

Python's ``hash()`` changes between processes, so we use a fixed 64-bit mix for integers and
BLAKE2 for strings. Strings are hashed once per *distinct* value (Arrow dictionary encoding), then
mapped back to rows with an index array, so there is no Python loop per row.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def mix64(x: np.ndarray, salt: int = 0) -> np.ndarray:
    """SplitMix64 finaliser: a well-spread, deterministic 64-bit hash of int64 values."""
    z = x.astype(np.uint64) + np.uint64((0x9E3779B97F4A7C15 * (salt + 1)) & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z


def hash_strings(values: list[str], salt: int = 0) -> np.ndarray:
    """uint64 hashes of a (small) list of distinct strings."""
    key = salt.to_bytes(8, "little", signed=False)
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8, key=key).digest(), "little")
         for v in values),
        dtype=np.uint64, count=len(values))


def hash_array(arr: pa.Array | pa.ChunkedArray, num_buckets: int, salt: int = 0,
               offset: int = 0) -> np.ndarray:
    """Hash every value of an Arrow array into ``[offset, offset + num_buckets)`` (int64).

    Nulls map to -1 so the caller can send them to the out-of-vocabulary slot.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False))
    if pa.types.is_integer(arr.type):
        raw = np.asarray(arr.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
        h = mix64(raw, salt)
    else:
        enc = pc.dictionary_encode(arr.cast(pa.string()))
        uniques = enc.dictionary.to_pylist()
        table = hash_strings([u for u in uniques], salt)
        idx = np.asarray(enc.indices.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
        h = table[idx] if len(table) else np.zeros(len(arr), dtype=np.uint64)
    out = (h % np.uint64(num_buckets)).astype(np.int64) + offset
    out[~valid] = -1
    return out


_NON_WORD = r"[^\p{L}\p{N}]+"  # anything but a Unicode letter or number separates words
_ASCII_NON_WORD = r"[^a-z0-9]+"  # the same set on lower-cased ASCII text


def word_tokens(text: pa.Array | pa.ChunkedArray) -> pa.ListArray:
    """Lower-cased alphanumeric words of each text (null -> empty list)."""
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    text = pc.fill_null(text.cast(pa.string()), "")
    # RE2 compiles the Unicode classes on every call (~7 ms: most of one served request's cost);
    # on ASCII text the plain class below is the same set and compiles in ~0.1 ms.
    pattern = _ASCII_NON_WORD if pc.all(pc.string_is_ascii(text)).as_py() is not False \
        else _NON_WORD
    cleaned = pc.replace_substring_regex(pc.utf8_lower(text), pattern, " ")
    words = pc.split_pattern(pc.utf8_trim_whitespace(cleaned), " ")
    # "".split(" ") gives [""]: drop empty tokens
    flat = pc.list_flatten(words)
    keep = pc.not_equal(flat, "")
    lengths = pc.list_value_length(words).to_numpy(zero_copy_only=False)
    row = np.repeat(np.arange(len(words)), lengths)
    keep_np = np.asarray(keep.to_numpy(zero_copy_only=False))
    new_lengths = np.bincount(row[keep_np], minlength=len(words))
    offsets = np.concatenate([[0], np.cumsum(new_lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), flat.filter(keep))


def char_trigrams(word: str) -> list[str]:
    """Character 3-grams with boundary marks, as in Que2Search: 'shoe' -> #sh sho hoe oe#."""
    w = f"#{word}#"
    return [w[i:i + 3] for i in range(max(1, len(w) - 2))]
