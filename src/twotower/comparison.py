"""The MOBIUS comparison on the simulator (BENCHMARK.md section 2 and the paper's Table 1), shared
by ``bench/mobius.py`` and ``twotower demo``: trains every contender in the same run and prints
one table."""
from __future__ import annotations

import time
from pathlib import Path

from twotower.eval.simulator import (HeldOut, click_auc_and_top_relevance, run_scores,
                                     teacher_scores)
from twotower.mobius.teachers import LexicalTeacher
from twotower.pipeline import train_run
from twotower.presets import mobius_simulator_config, simulator_config


def run_comparison(data_dir: str | Path, workdir: str | Path, epochs: int | None = None,
                   ks: tuple[int, ...] = (10, 50, 100), table1: bool = True,
                   oracle: bool = False, max_searches: int = 600, batch_size: int | None = None,
                   seed: int = 0, text_buckets: int | None = 4096, dssm: bool = True,
                   threads: int | None = 1, log=print) -> dict:
    """``text_buckets``: hash buckets of the text features for every contender (smaller tables
    train faster on CPU; None keeps the preset's). ``epochs`` / ``batch_size``: None keeps the
    MOBIUS preset's, for every contender. ``dssm``: also train the in-batch softmax DSSM.
    ``threads``: torch CPU threads while training (1 by default: these small models gain nothing
    from a second intra-op thread, and on a shared CPU its spin-waits cost 10x and more)."""
    workdir = Path(workdir)
    held = HeldOut(data_dir, max_searches)
    preset = mobius_simulator_config(data_dir, workdir / "preset").train
    train = {"epochs": epochs or preset.epochs, "batch_size": batch_size or preset.batch_size,
             "progress": False, "seed": seed, "early_stopping_patience": None}
    if threads:
        train["threads"] = threads
    common = {"train": train, "eval": {"ks": list(ks)}}
    rows: dict[str, dict] = {}

    def shrink(cfg):
        for f in cfg.data.features:
            if text_buckets and f.kind.value == "text":
                f.num_buckets = text_buckets
        return cfg

    extra: dict[str, dict] = {}

    def mobius(name: str, **mob) -> Path:
        t = time.perf_counter()
        cfg = mobius_simulator_config(data_dir, workdir / name, **common,
                                      objective={"name": "mobius", "mobius": mob})
        s = train_run(shrink(cfg), overwrite=True)
        extra[name] = {**s.report["mobius"], "seconds": time.perf_counter() - t,
                       "train_seconds": s.train.seconds}
        extra[name].pop("brw_weight", None)
        log(f"  trained {name} in {time.perf_counter() - t:.1f}s "
            f"({s.report['mobius']['bad_cases_total']:,} bad cases)")
        return s.run_dir

    if dssm:
        t = time.perf_counter()
        run = train_run(shrink(simulator_config(data_dir, workdir / "dssm", **common)),
                        overwrite=True).run_dir
        log(f"  trained dssm in {time.perf_counter() - t:.1f}s")
        rows["DSSM in-batch softmax (clicks)"] = held.metrics(run_scores(run, held), list(ks))
    ctr = mobius("ctr_two_tower", bad_cases="none")
    rows["CTR two-tower (click/unclick)"] = held.metrics(run_scores(ctr, held), list(ks))
    rows["relevance only (lexical teacher)"] = held.metrics(teacher_scores(LexicalTeacher(), held), list(ks))
    mob = mobius("mobius_lexical", bad_cases="active", teacher="lexical")
    rows["MOBIUS (lexical teacher)"] = held.metrics(run_scores(mob, held), list(ks))
    rows["MOBIUS + BRW (bid)"] = held.metrics(run_scores(mob, held, brw=True), list(ks))
    if oracle:
        orc = mobius("mobius_oracle", bad_cases="active", teacher="oracle",
                     oracle_data=str(data_dir))
        rows["MOBIUS (oracle teacher, experiment)"] = held.metrics(run_scores(orc, held), list(ks))
        rows["MOBIUS oracle + BRW"] = held.metrics(run_scores(orc, held, brw=True), list(ks))
    table1_rows: dict[str, dict] = {}
    if table1:
        rnd = mobius("random_bad", bad_cases="random")
        for label, run in (("(a) 2-class click/unclick", ctr), ("(b) 3-class, random bad cases", rnd),
                           ("(c) 3-class, active-learning bad cases", mob)):
            table1_rows[label] = click_auc_and_top_relevance(run, held)
    m = extra["mobius_lexical"]
    return {"retrieval": rows, "table1": table1_rows, "runs": extra,
            "bad_case_share_of_training": m["mining_seconds"] / max(m["train_seconds"], 1e-9),
            "searches": len(held.users), "ks": list(ks), "train": train,
            "text_buckets": text_buckets}


def format_tables(res: dict) -> str:
    ks = res["ks"]
    cols = [f"{m}@{k}" for k in ks for m in ("relevant", "cpm", "ideal_recall")]
    w = max(len(n) for n in res["retrieval"]) + 2
    lines = [f"{'method':<{w}}" + "".join(f"{c:>17}" for c in cols)]
    for name, r in res["retrieval"].items():
        lines.append(f"{name:<{w}}" + "".join(f"{r[c]:>17.4f}" for c in cols))
    if res["table1"]:
        lines += ["", "Table 1 shape (paper: AUC 0.823/0.795/0.811, relevance 0.312/0.467/0.575)",
                  f"{'variant':<42}{'click AUC':>12}{'top-1% rel.':>14}"]
        for name, r in res["table1"].items():
            lines.append(f"{name:<42}{r['auc']:>12.4f}{r['top_relevance']:>14.4f}")
    lines.append(f"\nbad-case step = {res['bad_case_share_of_training']:.1%} of MOBIUS training time")
    return "\n".join(lines)
