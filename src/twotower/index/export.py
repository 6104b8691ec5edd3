"""Embeddings: the retrieval vectors of items and queries, exported with their original ids
(Parquet + .npy) for the index and any external tool."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from twotower.data.readers import write_parquet
from twotower.features.dataset import ItemCorpus, as_tensors
from twotower.features.feature_set import Encoded
from twotower.progress import chunk_starts
from twotower.run import atomic_write


def vectors_table(ids: pa.Array | np.ndarray, vectors: np.ndarray, id_name: str) -> pa.Table:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    flat = pa.array(vectors.reshape(-1))
    return pa.table({id_name: ids, "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])})


def write_vectors(folder: Path, stem: str, ids: pa.Array | np.ndarray, vectors: np.ndarray,
                  id_name: str) -> dict[str, str]:
    """``<stem>.parquet`` (id + vector) and ``<stem>.npy`` (the matrix, row order = Parquet's)."""
    folder.mkdir(parents=True, exist_ok=True)
    pq_path = write_parquet(vectors_table(ids, vectors, id_name), folder / f"{stem}.parquet")
    npy_path = atomic_write(folder / f"{stem}.npy",
                            lambda p: np.save(open(p, "wb"), vectors.astype(np.float32)))
    return {"parquet": str(pq_path), "npy": str(npy_path)}


def read_vectors(path: str | Path) -> tuple[pa.Array, np.ndarray]:
    """(ids, vectors [N, D]) of an exported Parquet file."""
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    vec = t["vector"].combine_chunks()
    d = vec.type.list_size
    return t.column(0).combine_chunks(), vec.flatten().to_numpy().reshape(-1, d)


@torch.no_grad()
def encode_corpus(model, corpus: ItemCorpus, batch_size: int = 4096,
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """Retrieval vectors of every corpus item: [N, D]."""
    model.eval()
    out = []
    for start in chunk_starts(len(corpus), batch_size, "encoding items", "item"):
        feats = {k: v.to(device) for k, v in corpus.tensors(slice(start, start + batch_size)).items()}
        out.append(model.retrieval_item(model.encode_item(feats)).float())
    return torch.cat(out)


@torch.no_grad()
def encode_queries(model, query: Encoded, batch_size: int = 4096,
                   device: str | torch.device = "cpu") -> torch.Tensor:
    """Retrieval vectors of every request: [R, Vq, D]."""
    model.eval()
    n = len(next(iter(query.values())))
    out = []
    for start in chunk_starts(n, batch_size, "encoding queries", "query"):
        feats = {k: v.to(device) for k, v in as_tensors(query, slice(start, start + batch_size)).items()}
        out.append(model.retrieval_query(model.encode_query(feats)).float())
    return torch.cat(out)
