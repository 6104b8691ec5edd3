"""The PDN trigger-path channel: a tiny PDN run on a MovieLens-format log, served by its paths."""
import numpy as np
import pytest
import torch
import yaml

from twotower.channels.config import validate_channels
from twotower.channels.kinds import PDNChannel, build_pdn
from twotower.errors import ArtifactError, ConfigError

N_USERS, N_ITEMS, PER_USER = 40, 30, 10


@pytest.fixture(scope="module")
def pdn_run(tmp_path_factory):
    """A PDN run trained one epoch on a tiny log in MovieLens 100K's format."""
    from twotower.data.movielens import prepare_movielens
    from twotower.pipeline import train_run
    from twotower.presets import movielens_config

    root = tmp_path_factory.mktemp("pdn")
    raw = root / "raw"
    raw.mkdir()
    rng = np.random.default_rng(0)
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(1, N_USERS + 1):
        for t, i in enumerate(rng.choice(N_ITEMS, PER_USER, replace=False) + 1):
            inter.append(f"{u}\t{i}\t4\t{880000000 + 1000 * t + u}")
    (raw / "ml-100k.inter").write_text("\n".join(inter) + "\n")
    (raw / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        + "".join(f"{i}\tMovie {i}\t1995\t{'Comedy' if i % 2 else 'Drama'}\n"
                  for i in range(1, N_ITEMS + 1)))
    (raw / "ml-100k.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        + "".join(f"{u}\t{20 + u % 3}\t{'MF'[u % 2]}\tother\t00000\n" for u in range(1, N_USERS + 1)))
    data = root / "ml"
    prepare_movielens(raw, data, history_len=8)
    run = root / "run"
    train_run(movielens_config(data, run, history_len=8, model={
        "name": "pdn", "embedding_dim": 8, "hidden": [16], "output_dim": 8, "max_len": 8,
        "trigger_hidden": [8]}, objective={"in_batch_block": None}, train={
        "epochs": 1, "batch_size": 64, "progress": False, "checkpoint_every": 100_000,
        "early_stopping_patience": None, "threads": 1}), overwrite=True)
    return run


def open_pdn(tmp_path, run, neighbours):
    cfg = validate_channels({"name": "t", "output": str(tmp_path / "out"), "channels": [
        {"name": "paths", "kind": "pdn", "run": str(run), "neighbours": neighbours}]}).channels[0]
    info = build_pdn(cfg, tmp_path / "out" / "paths")
    return cfg, info, PDNChannel(cfg, tmp_path / "out" / "paths")


def test_pdn_channel_sums_every_trigger_path(tmp_path, pdn_run):
    """Defining behaviour (Li et al., SIGIR 2021): score(k) = log sum over the request's triggers
    j of w_uj * exp(s_jk), w from the TriggerNet, s from the SimilarityNet."""
    cfg, info, ch = open_pdn(tmp_path, pdn_run, neighbours=N_ITEMS)
    assert info == {"items": N_ITEMS, "neighbours": N_ITEMS - 1}
    assert sorted(ch.fields) == ["age", "gender", "history", "occupation", "user_id"]
    history = [3, 17, 8, 25]  # raw item ids, oldest first
    req = {"user_id": 5, "history": history, "gender": "F", "age": 22, "occupation": "other"}
    ids, scores = ch.retrieve([req], 10)
    assert len(ids[0]) == 10 == len(set(ids[0]))
    assert np.all(np.diff(scores[0]) <= 1e-9)  # best first

    # the reference, straight from the model's two nets
    model = ch.model
    feats = ch.encoder.tensors([req])
    with torch.no_grad():
        log_w, mask = model.trigger_log_weights(feats)  # [1, L]
        a = model.trigger_vectors(feats["history"])[0]  # [L, D]
    from twotower.index.export import encode_corpus
    from twotower.runs import load_run

    b = encode_corpus(model, load_run(pdn_run).corpus())[:, :-1]  # [N, D], corpus rows
    trig_rows = ch.corpus_pos[feats["history"][0].numpy()]
    for item, score in zip(ids[0], scores[0]):
        k = int(ch.items.positions([item])[0])
        paths = [log_w[0, j] + (a[j] @ b[k]) / model.temperature
                 for j in range(a.shape[0]) if mask[0, j] and trig_rows[j] != k]
        assert score == pytest.approx(torch.logsumexp(torch.stack(paths), 0).item(), abs=1e-4)
    # summing the paths: every item's score is above its best single path (several triggers)
    best_single = max(float(log_w[0, j] + (a[j] @ b[int(ch.items.positions([ids[0][0]])[0])])
                            / model.temperature) for j in range(a.shape[0]) if mask[0, j])
    assert scores[0][0] > best_single

    # exclusions, unknown and empty histories
    ids_ex, _ = ch.retrieve([req], 10, exclude=[[ids[0][0], ids[0][1]]])
    assert ids_ex[0][:8] == ids[0][2:10] and ids[0][0] not in ids_ex[0]
    none, _ = ch.retrieve([{"history": [999]}, {"user_id": 1}], 5)
    assert none == [[], []]


def test_pdn_channel_needs_a_pdn_run_and_its_table(tmp_path, pdn_run, served_run):
    cfg = validate_channels({"name": "t", "output": str(tmp_path / "out"), "channels": [
        {"name": "paths", "kind": "pdn", "run": str(served_run)}]}).channels[0]
    with pytest.raises(ConfigError, match="channel 'paths': kind pdn needs a PDN run"):
        build_pdn(cfg, tmp_path / "out" / "paths")
    cfg = validate_channels({"name": "t", "output": str(tmp_path / "out"), "channels": [
        {"name": "paths", "kind": "pdn", "run": str(pdn_run)}]}).channels[0]
    with pytest.raises(ArtifactError, match="channel 'paths'.*channels build"):
        PDNChannel(cfg, tmp_path / "out" / "nothing")
    with pytest.raises(ConfigError, match="neighbours"):
        validate_channels({"channels": [{"name": "p", "kind": "pdn", "run": "x", "neighbours": 0}]})


def test_pdn_channel_merges_in_the_service(tmp_path, pdn_run):
    from twotower.channels.service import ChannelService, build_channels
    from twotower.channels.config import load_channels_config

    spec = {"name": "ml", "output": "built", "merge": {"n": 5, "fetch_k": 10},
            "channels": [{"name": "paths", "kind": "pdn", "run": str(pdn_run), "neighbours": 10},
                         {"name": "dssm_like", "kind": "run", "run": str(pdn_run)}]}
    path = tmp_path / "channels.yaml"
    path.write_text(yaml.safe_dump(spec))
    report = build_channels(load_channels_config(path), log=lambda *a: None)
    assert report["paths"]["neighbours"] == 10
    svc = ChannelService(path)
    out = svc.retrieve([{"user_id": 2, "history": [4, 9, 12]}], 5)
    assert out["failed_channels"] == {}
    found = {c for item in out["results"][0]["channels"] for c in item}
    assert "paths" in found
    svc.close()
