"""The ``twotower`` command line: demo, simulate, train, evaluate, export, index, serve."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

# Before torch loads OpenMP: spin-waiting worker threads stall each other whenever the cores are
# shared (a service beside its clients, a busy box): several times slower training on loaded
# cores (README), no measurable difference on idle ones. The user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402

from twotower.errors import TwoTowerError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Two-tower candidate retrieval: from click logs to a served index.")


@app.callback()
def _options(quiet: bool = typer.Option(False, "--quiet", "-q",
                                        help="no progress bars (they are off when stderr is not a terminal)")):
    from twotower.progress import set_quiet

    set_quiet(quiet)


def _run(fn):
    """Call ``fn``; a user error prints one clear message (no traceback) and exits 1."""
    try:
        return fn()
    except TwoTowerError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


@app.command()
def simulate(out_dir: Path = typer.Argument(..., help="folder to write the log into"),
             impressions: int = typer.Option(200_000, help="shown impressions"),
             seed: int = typer.Option(0),
             funnel_log: bool = typer.Option(False, "--funnel-log", help="also write funnel.parquet "
                                             "(the ranking stage: shown and auctioned-not-shown)"),
             config: Optional[Path] = typer.Option(None, help="YAML of SimulatorConfig fields")):
    """Simulate a sponsored-search impression log (Parquet) with its ground truth."""
    def go():
        import yaml

        from twotower.data.simulator import SimulatorConfig, simulate as sim
        from twotower.errors import ConfigError

        fields = {"seed": seed, "n_impressions": impressions, "funnel_log": funnel_log}
        if config is not None:
            if not config.is_file():
                raise ConfigError(f"{config}: not found")
            fields.update(yaml.safe_load(config.read_text()) or {})
        log = sim(SimulatorConfig(**fields), out_dir)
        typer.echo(f"wrote {out_dir}: {log.click_rate:.2%} click rate")

    _run(go)


@app.command()
def train(config: Optional[Path] = typer.Argument(None, help="run config (YAML)"),
          set_: List[str] = typer.Option([], "--set", help="override, e.g. train.lr=3e-4"),
          resume: Optional[Path] = typer.Option(None, help="run folder to resume from its last checkpoint"),
          overwrite: bool = typer.Option(False, help="replace an existing run folder"),
          stream: bool = typer.Option(False, help="read the training log from disk every epoch"),
          report: bool = typer.Option(True, "--report/--no-report",
                                      help="write RUN_DIR/report/ (plots + HTML) at the end"),
          nproc: int = typer.Option(1, min=1, help="data-parallel processes on this machine "
                                    "(torchrun: gloo on CPU, NCCL on GPUs); train.batch_size is "
                                    "per process")):
    """Fit features, train, evaluate and export one run (and draw its report)."""
    def go():
        from twotower.config import load_config
        from twotower.errors import ConfigError
        from twotower.pipeline import train_run

        if resume is None and config is None:
            raise ConfigError("give a CONFIG.yaml to train, or --resume RUN_DIR")
        if resume is not None and (config is not None or set_):
            # a resumed run continues under the config.yaml saved in its folder; silently
            # ignoring a different one would train something other than what was asked for
            raise ConfigError(f"--resume {resume} continues with that run's own config.yaml; "
                              "give either CONFIG.yaml (and --set) or --resume, not both")
        if nproc > 1:  # the same command once per process, under torchrun
            from twotower.runs import load_run_config
            from twotower.run import RunDir
            from twotower.train.distributed import check_config, launch

            check_config(load_run_config(RunDir(resume)) if resume is not None
                         else load_config(config, set_))

            args = (["--resume", str(resume)] if resume is not None else [str(config)])
            args += [a for s in set_ for a in ("--set", s)] + ["--overwrite"] * overwrite
            args += ["--stream"] * stream + ([] if report else ["--no-report"])
            code = launch(nproc, ["train", *args])
            if code:
                raise typer.Exit(code)
            return
        from twotower.eval.tables import print_metrics

        cfg = None if resume is not None else load_config(config, set_)
        summary = train_run(cfg, resume_dir=resume, overwrite=overwrite, stream=stream)
        if not summary.primary:  # another rank of a data-parallel run: rank 0 reports
            return
        ks = sorted({k for k in (cfg or summary_cfg(summary)).eval.ks})
        cols = [f"{m}@{k}" for k in ks for m in ("hr", "ndcg")] + ["mrr"]
        print_metrics(f"{summary.metrics.get('split', '')} metrics — {summary.run_dir}",
                      {"model": summary.metrics}, cols)
        if report:
            _train_report(summary.run_dir)

    _run(go)


def _train_report(run_dir: Path) -> None:
    """The report at the end of training; without matplotlib a clear line, not a failure."""
    from twotower.eval.plots import have_matplotlib

    if not have_matplotlib():
        typer.secho("report skipped: matplotlib is not installed (pip install 'matplotlib>=3.8', "
                    "then `twotower report RUN_DIR`)", fg=typer.colors.YELLOW, err=True)
        return
    from twotower.eval.report import write_report

    typer.echo(f"report: {write_report(run_dir).html}")


@app.command()
def report(run_dir: Path):
    """Plots and one self-contained HTML page of a run, in RUN_DIR/report/."""
    def go():
        from twotower.eval.report import write_report

        rep = write_report(run_dir)
        typer.echo(json.dumps({"html": str(rep.html), "plots": rep.plots}, indent=2))

    _run(go)


def summary_cfg(summary):
    from twotower.run import RunDir
    from twotower.runs import load_run_config

    return load_run_config(RunDir(summary.run_dir))


@app.command()
def init(log: Path = typer.Argument(..., help="a log (Parquet / CSV / TSV) to scaffold a config for"),
         out: Path = typer.Option(Path("twotower.yaml"), "--out", "-o", help="config file to write"),
         item_id: Optional[str] = typer.Option(None, help="the item id column (default: guessed)"),
         label: Optional[str] = typer.Option(None, help="the 0/1 label column (default: guessed)"),
         force: bool = typer.Option(False, help="replace an existing config file")):
    """Scaffold a commented run config from a log's schema: edit it, then `twotower train` it."""
    def go():
        from twotower.scaffold import write_scaffold

        path = write_scaffold(log, out, item_id, label, force)
        typer.echo(path.read_text())
        typer.echo(f"wrote {path}: check the sides and kinds, then `twotower train {path}`", err=True)

    _run(go)


@app.command()
def evaluate(run_dir: Path, split: Optional[str] = typer.Option(
        None, help="valid or test (default: each of them the run has)")):
    """Evaluate a trained run (full-corpus ranking) and write metrics.json."""
    def go():
        from twotower.pipeline import evaluate_run

        m = evaluate_run(run_dir, split)
        typer.echo(json.dumps(m, indent=2))

    _run(go)


@app.command()
def export(run_dir: Path,
           queries: Optional[Path] = typer.Option(None, help="table of query rows to embed")):
    """Export item (and query) embeddings with their ids to Parquet and .npy."""
    def go():
        from twotower.pipeline import export_run

        typer.echo(json.dumps({"items": export_run(run_dir)["files"]["items"],
                               "queries": _try_queries(run_dir, queries)}, indent=2))

    _run(go)


def _try_queries(run_dir, queries):
    from twotower.errors import DataError
    from twotower.pipeline import export_queries

    try:
        return export_queries(run_dir, queries)
    except DataError as err:
        if queries is not None:
            raise
        return f"skipped: {err}"


@app.command("index")
def index_cmd(args: List[str] = typer.Argument(..., metavar="RUN_DIR | add RUN_DIR ITEMS | remove RUN_DIR ID...",
                                                help="build: RUN_DIR; add: add RUN_DIR new_items.parquet; "
                                                     "remove: remove RUN_DIR ID..."),
              kind: str = typer.Option("auto", help="auto (exact up to 200k items, ivf-flat above), "
                                       "flat, hnsw, ivf-flat, ivf-pq, opq, sq8, fp16"),
              param: List[str] = typer.Option([], "--param", help="index parameter, e.g. nlist=1024"),
              weight_column: Optional[str] = typer.Option(None, help="business weight column of the "
                                                          "item table, folded into the vectors"),
              backend: str = typer.Option("faiss", help="faiss (in process) or milvus"),
              uri: Optional[str] = typer.Option(None, help="milvus: a local .db file (milvus-lite, "
                                                "default RUN/index/milvus.db) or http://host:19530"),
              brw: str = typer.Option("fold", help="fold: cos x w as one MIPS; two-stage: ANN "
                                      "top --brw-n by the model, then exact cos x w^alpha (MOBIUS v2)"),
              brw_n: int = typer.Option(1000, help="two-stage: candidates reranked"),
              brw_floor: Optional[float] = typer.Option(None, help="two-stage: candidates with "
                                                        "p(bad)/p(click) above this rank last "
                                                        "(retrieval: click_minus_bad)")):
    """Build an index of a run's items (a new version), or add / remove items."""
    def go():
        from twotower.errors import ConfigError
        from twotower.index import run_index

        if args[0] in ("add", "remove"):
            if len(args) < 3:
                raise ConfigError(f"usage: twotower index {args[0]} RUN_DIR "
                                  f"{'ITEMS.parquet' if args[0] == 'add' else 'ID...'}")
            vi = (run_index.add_run_items(args[1], args[2]) if args[0] == "add"
                  else run_index.remove_run_items(args[1], args[2:]))
        else:
            if len(args) != 1:
                raise ConfigError("usage: twotower index RUN_DIR [--kind K] [--param name=value]")
            params = {}
            for kv in param:
                name, _, value = kv.partition("=")
                if not value:
                    raise ConfigError(f"--param {kv!r}: expected name=value")
                params[name] = None if value.lower() == "auto" else int(value) if value.lstrip("-").isdigit() else value
            vi = run_index.build_run_index(args[0], kind, params, weight_column, backend, uri,
                                           brw, brw_n, brw_floor)
        m = vi.manifest
        typer.echo(json.dumps({"version": m["version"], "kind": m["kind"], "count": m["count"],
                               "params": m["params"], "recall": m.get("recall"),
                               "path": str(vi.path)}, indent=2))
        if m.get("recall"):
            r = m["recall"]
            typer.echo(f"recall@{r['k']} against exact search: {r['recall']:.3f} "
                       f"({r['queries']} queries: {r['query_source']})", err=True)

    _run(go)


@app.command()
def serve(run_dir: Optional[Path] = typer.Argument(None, help="run folder (or --channels)"),
          host: str = typer.Option("127.0.0.1", help="bind address (loopback by default)"),
          port: int = typer.Option(8000),
          api_key: Optional[str] = typer.Option(None, envvar="TWOTOWER_API_KEY",
                                                help="admin key: enables /admin routes, which are "
                                                     "off without it (X-API-Key or Bearer)"),
          client_key: Optional[str] = typer.Option(None, envvar="TWOTOWER_CLIENT_KEY",
                                                   help="if set, /retrieve and /metadata need this "
                                                        "key (or the admin key)"),
          cors_origin: List[str] = typer.Option([], "--cors-origin",
                                                help="allow CORS from this origin (repeatable); "
                                                     "no CORS headers by default"),
          docs: bool = typer.Option(True, "--docs/--no-docs",
                                    help="Swagger UI at /docs, served from local files"),
          max_k: int = typer.Option(1000, help="largest k a request may ask for"),
          inspector: bool = typer.Option(False, help="serve the retrieval inspector page at "
                                         "/inspector (behind the API key when one is set)"),
          channels: Optional[Path] = typer.Option(None, help="channels YAML: serve the merge of "
                                                  "its channels instead of one run"),
          workers: int = typer.Option(1, min=1, help="replica processes sharing one mmap'ed index"),
          max_batch: int = typer.Option(256, min=1, help="query rows batched into one search"),
          max_wait_ms: float = typer.Option(2.0, min=0, max=1000,
                                            help="longest a request waits to be batched (under load)"),
          batching: bool = typer.Option(True, help="batch concurrent requests (--no-batching: one by one)"),
          trace: bool = typer.Option(False, help="OpenTelemetry spans of /retrieve (needs the "
                                     "tracing extra; OTLP when its exporter is installed)")):
    """Serve top-K retrieval over HTTP (FastAPI): /retrieve, /health, /metadata, /metrics,
    /admin/reload (and /inspector with --inspector)."""
    def go():
        from twotower.errors import ConfigError
        from twotower.serve.app import serve as run_server
        from twotower.serve.batcher import BatchingConfig

        if (run_dir is None) == (channels is None):
            raise ConfigError("give a RUN_DIR or --channels CHANNELS.yaml (one of them)")
        service = None
        if channels is not None:
            if workers > 1:
                raise ConfigError("--workers replicates one run's service; --channels runs in one")
            from twotower.channels.service import open_service

            service = open_service(channels)
        cfg = BatchingConfig(batching, max_batch, max_wait_ms)
        if trace:
            if workers > 1:
                raise ConfigError("--trace: one process (--workers 1); replicas are not traced yet")
            from twotower.serve.tracing import configure_tracing

            typer.secho(f"tracing /retrieve to {configure_tracing()}", err=True)
        if workers > 1:  # replicas sharing one memory-mapped index
            from twotower.serve.workers import serve_workers

            return serve_workers(run_dir, host, port, workers, max_k, api_key, cfg, inspector,
                                 client_key=client_key, cors_origins=tuple(cors_origin), docs=docs)
        run_server(run_dir, host=host, port=port, api_key=api_key, max_k=max_k,
                   inspector=inspector, channels=service, client_key=client_key,
                   cors_origins=tuple(cors_origin), docs=docs, batching=cfg)

    _run(go)


@app.command()
def fields(run_dir: Path, split: str = typer.Option("valid", help="rows whose query fields are averaged")):
    """Mean learned field weights of a SENet run (which fields the towers rely on)."""
    def go():
        from rich.console import Console
        from rich.table import Table

        from twotower.eval.fields import mean_field_weights

        weights = mean_field_weights(run_dir, split)
        table = Table(title=f"SENet mean field weights — {run_dir}")
        for col in ("side", "field", "weight"):
            table.add_column(col, justify="right" if col == "weight" else "left")
        for side, ws in weights.items():
            for name, w in sorted(ws.items(), key=lambda kv: -kv[1]):
                table.add_row(side, name, f"{w:.3f}")
        Console().print(table)

    _run(go)


@app.command()
def demo(workdir: Path = typer.Option(Path("runs/demo"), help="where data and runs go"),
         impressions: int = typer.Option(200_000)):
    """Simulate a sponsored-search log, train a two-tower model, evaluate it, and retrieve."""
    def go():
        from twotower.demo import run_demo

        run_demo(workdir, impressions)

    _run(go)


channels_app = typer.Typer(no_args_is_help=True, help="Multi-channel retrieval: build, learn "
                           "weights from feedback, replay them offline.")
app.add_typer(channels_app, name="channels")


@channels_app.command("build")
def channels_build(config: Path = typer.Argument(..., help="channels YAML")):
    """Validate every channel and build its tables (co-occurrence, popularity, BM25, index)."""
    def go():
        from twotower.channels.service import build_channels

        report = build_channels(config, log=lambda *_: None)
        typer.echo(json.dumps(report, indent=2, default=str))

    _run(go)


@channels_app.command("learn")
def channels_learn(config: Path = typer.Argument(..., help="channels YAML"),
                   feedback: Path = typer.Argument(..., help="feedback log (Parquet / CSV)")):
    """Update the channel weights from a feedback log (bandit); saved with their history."""
    def go():
        from twotower.channels.service import learn_weights

        typer.echo(json.dumps(learn_weights(config, feedback), indent=2))

    _run(go)


@channels_app.command("replay")
def channels_replay(config: Path = typer.Argument(..., help="channels YAML"),
                    feedback: Path = typer.Argument(..., help="held-out feedback log with the "
                                                    "request fields"),
                    k: Optional[int] = typer.Option(None, help="merged N (default merge.n)")):
    """Replay the config's weights, equal weights and the learned ones on a held-out log."""
    def go():
        from twotower.channels.service import open_service, replay
        from twotower.channels.weights import WeightsFile

        svc = open_service(config)
        names = list(svc.channels)
        settings = {"config": {c.name: c.weight for c in svc.cfg.channels},
                    "equal": {n: 1.0 for n in names}}
        learned = WeightsFile(svc.cfg.weights_path).current(names)
        if learned is not None:
            settings["learned"] = learned
        typer.echo(json.dumps(replay(svc, feedback, settings, k), indent=2))
        svc.close()

    _run(go)


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    sys.exit(main())
