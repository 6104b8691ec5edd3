"""The package's imports flow one way, down the data flow, and never close a circle.

Every ``import`` / ``from ... import`` of ``twotower`` modules is parsed, including those inside
functions (a lazy import is still a dependency). A module may import its own stage and any earlier
one; an import from an earlier stage into a later one fails the test, as does any circle.

Run as a script to report on another checkout: ``python tests/test_imports.py path/to/src``.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: The flow, earliest first. A module's stage is its folder (``twotower.models.dat`` -> models)
#: or, for a top-level module, its own name. Foundations come first: errors, the progress helper
#: and shared types,
#: the registry (which imports nothing), run-folder I/O and the typed config. ``runs`` (open a
#: trained run) sits right after training so that MOBIUS, index, serve and eval can use it;
#: ``recipes`` (what an objective brings to the training pipeline) right after it, so that an
#: objective with its own data loop (MOBIUS) can register one.
#: Orchestration (presets, the MOBIUS comparison, pipeline, demo, cli) imports stages; no stage
#: imports orchestration.
LAYERS = [
    "errors", "progress", "types", "registry", "run", "config",
    "data", "features", "towers", "models", "objectives", "train", "runs", "recipes",
    "mobius", "ebr", "consistency", "index", "serve", "channels", "eval",
    "presets", "intake", "scaffold", "pipeline", "comparison", "demo", "cli", "__main__",
]
RANK = {name: i for i, name in enumerate(LAYERS)}


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def stage(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "twotower" or len(parts) < 2:
        return None  # the package itself
    return parts[1]


def imports_of(path: Path, module: str, is_package: bool) -> set[str]:
    """twotower modules ``path`` imports anywhere in its body (functions included)."""
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("twotower"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("twotower"):
                continue
            out.add(target)
            for a in node.names:  # ``from twotower.models import dat`` imports a submodule
                out.add(f"{target}.{a.name}")
    return out


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    files = {module_name(p, src): p for p in (src / "twotower").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        targets = {t for t in imports_of(path, mod, path.name == "__init__.py") if t in files}
        graph[mod] = targets - {mod}
    return graph


def arrows_against_flow(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    bad = []
    for mod, targets in graph.items():
        s = stage(mod)
        for t in targets:
            ts = stage(t)
            if s is None or ts is None or s == ts:
                continue
            if s not in RANK or ts not in RANK:
                bad.append((mod, t))  # a new stage must be placed in LAYERS
            elif RANK[ts] > RANK[s]:
                bad.append((mod, t))
    return sorted(bad)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan). Importing a package
    runs its ``__init__``, so ``config -> twotower.models`` closes a circle through every model
    module that imports config."""
    edges = graph
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_every_stage_is_placed_in_the_flow():
    stages = {stage(m) for m in import_graph()} - {None}
    assert stages <= set(RANK), f"place these in LAYERS: {sorted(stages - set(RANK))}"


def test_imports_only_flow_down():
    bad = arrows_against_flow(import_graph())
    assert not bad, "imports against the data flow:\n" + "\n".join(f"  {a} -> {b}" for a, b in bad)


def test_no_import_circles():
    found = circles(import_graph())
    assert not found, "import circles:\n" + "\n".join("  " + " <-> ".join(c) for c in found)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "twotower"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("def f():\n    from twotower.models import base\n")
    (pkg / "models" / "__init__.py").write_text("from . import base\n")
    (pkg / "models" / "base.py").write_text("from ..config import f\n")
    graph = import_graph(tmp_path)
    assert ("twotower.config", "twotower.models") in arrows_against_flow(graph)
    assert any("twotower.config" in c and "twotower.models.base" in c for c in circles(graph))


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else SRC
    g = import_graph(root)
    bad = arrows_against_flow(g)
    cyc = circles(g)
    lines = sum(len(p.read_text().splitlines()) for p in (root / "twotower").rglob("*.py"))
    print(f"{len(g)} modules, {lines} lines; {len(bad)} imports against the flow; "
          f"{len(cyc)} circles")
    for a, b in bad:
        print(f"  against the flow: {a} -> {b}")
    for c in cyc:
        print(f"  circle ({len(c)} modules): {' '.join(c)}")
