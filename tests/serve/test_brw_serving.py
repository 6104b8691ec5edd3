"""A MOBIUS run is served with its business weight by default, end to end: `twotower train` ->
`twotower index RUN` (no --weight-column) -> Retriever and POST /retrieve rank by cos(q, a) * bid."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from twotower.cli import app
from twotower.config import dump_config
from twotower.index.export import read_vectors
from twotower.index.weights import brw_rerank
from twotower.presets import mobius_simulator_config
from twotower.serve.app import create_app
from twotower.serve.retriever import Retriever


def test_mobius_run_is_indexed_and_served_with_its_business_weight(sim_dir, tmp_path):
    cfg = mobius_simulator_config(
        sim_dir, tmp_path / "run",
        model={"embedding_dim": 8, "hidden": [16], "output_dim": 8},
        train={"epochs": 1, "max_steps": 12, "batch_size": 128, "progress": False, "threads": 1},
        eval={"ks": [5], "group_by": "search_id", "metric": "recall@5"},
        # the paper's BRW (cos x bid, click retrieval); v2's default weighs every ad 1 (brw_alpha 0)
        objective={"mobius": {"mode": "paper", "warmup_steps": 4, "max_bad_per_batch": 64}})
    for f in cfg.data.features:
        if f.kind.value == "text":
            f.num_buckets = 512
    path = tmp_path / "mobius.yaml"
    path.write_text(dump_config(cfg))
    runner = CliRunner()
    res = runner.invoke(app, ["--quiet", "train", str(path), "--no-report"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    assert json.loads((run / "contract.json").read_text())["brw_weight"] == "bid"

    res = runner.invoke(app, ["index", str(run), "--kind", "flat"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "index" / "v000001" / "manifest.json").read_text())["weight_column"] == "bid"

    # reference: exact cos(q, a) * bid over the exported click vectors
    ads = pq.read_table(sim_dir / "ads.parquet").to_pydict()
    bid = dict(zip(ads["ad_id"], ads["bid"]))
    ids, vecs = read_vectors(run / "embeddings" / "items.parquet")
    ids = ids.to_pylist()
    w = torch.tensor([bid[i] for i in ids], dtype=torch.float32)
    queries = [{"user_id": 3, "query_text": "running shoes"}, {"user_id": 7, "query_text": "cheap flights"}]
    retriever = Retriever(run)
    q = torch.from_numpy(retriever.encode(queries))[:, 0]  # [B, D] click vectors
    want_scores, want_pos = brw_rerank(q, torch.from_numpy(np.array(vecs)), w, 5)
    got = retriever.retrieve(queries, k=5)["results"]
    for r, (s, p) in enumerate(zip(want_scores, want_pos)):
        assert got[r]["ids"] == [ids[j] for j in p.tolist()]
        np.testing.assert_allclose(got[r]["scores"], s.numpy(), rtol=1e-4, atol=1e-5)
    # without the weight the ranking differs (bids vary), so the weight is really applied
    plain = (torch.nn.functional.normalize(q, dim=-1)
             @ torch.nn.functional.normalize(torch.from_numpy(np.array(vecs)), dim=-1).T)
    assert not torch.allclose(plain.topk(5).values, want_scores)

    body = TestClient(create_app(run)).post("/retrieve", json={"queries": queries, "k": 5}).json()
    assert [x["ids"] for x in body["results"]] == [x["ids"] for x in got]
