"""Headless plots (matplotlib, Agg backend) shared by ``twotower report`` and ``bench/*.py``.

Three shapes cover every picture the project draws: curves (a value per epoch / per K / per
step), bars against a baseline of the same run (the ratio printed on each bar), and trade-off
scatters joined per method (recall@K vs q/s, relevant@K vs CPM@K). Every PNG is written
atomically; a missing matplotlib is one clear error, not an ImportError traceback.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from twotower.errors import ConfigError
from twotower.run import atomic_write

#: (x values, y values) of one named curve
Curve = tuple[Sequence[float], Sequence[float]]
#: points (x, y, label) of one method on a trade-off plot
Points = Sequence[tuple[float, float, str]]


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'matplotlib>=3.8' (a dependency of "
                          "twotower; it is missing from this environment)") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    plt = pyplot()
    try:
        fig.tight_layout()
        return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    finally:
        plt.close(fig)


def curves(path: str | Path, title: str, xlabel: str, ylabel: str, series: Mapping[str, Curve],
           right: Mapping[str, Curve] | None = None, right_label: str = "", logx: bool = False,
           logy: bool = False, markers: bool = True) -> Path:
    """One line per named series; ``right``: series on a second y axis (e.g. a metric beside a
    loss)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    style = "o-" if markers else "-"
    for name, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), style, label=name, markersize=4, linewidth=1.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if right:
        ax2 = ax.twinx()
        for i, (name, (xs, ys)) in enumerate(right.items()):
            ax2.plot(list(xs), list(ys), "s--", color=f"C{len(series) + i}", label=name,
                     markersize=4, linewidth=1.5)
        ax2.set_ylabel(right_label)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, fontsize=8, loc="best")
    return _save(fig, path)


def bars(path: str | Path, title: str, ylabel: str, values: Mapping[str, float],
         baseline: str | None = None, logy: bool = False, fmt: str = "{:,.0f}") -> Path:
    """Horizontal-label bars; with ``baseline`` (a key of ``values``) each bar is annotated with
    its ratio to that bar, measured in the same run."""
    plt = pyplot()
    names = list(values)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 2), 4.4))
    colors = ["C1" if n == baseline else "C0" for n in names]
    heights = [float(values[n]) for n in names]
    rects = ax.bar(range(len(names)), heights, color=colors)
    base = float(values[baseline]) if baseline is not None and values.get(baseline) else None
    for rect, h in zip(rects, heights):
        text = fmt.format(h) + (f"\n{h / base:.2f}×" if base else "")
        ax.annotate(text, (rect.get_x() + rect.get_width() / 2, h), ha="center", va="bottom",
                    fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title + (f"\n(ratio vs {baseline}, same run)" if base else ""), fontsize=10)
    if logy:
        ax.set_yscale("log")
    ax.margins(y=0.18)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def grouped_bars(path: str | Path, title: str, ylabel: str, groups: Sequence[str],
                 series: Mapping[str, Sequence[float]], xlabel: str = "", log: bool = False) -> Path:
    """Side-by-side bars: one bar per series in every group (e.g. popularity decile); ``log``
    draws the y axis on a log scale (values spanning orders of magnitude)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(min(11.0, max(7.0, 0.3 * len(groups) * len(series) + 2)), 4.2))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, list(values), width=width, label=name, color=f"C{i}")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(list(groups), rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_xlabel(xlabel)
    if log:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def tradeoff(path: str | Path, title: str, xlabel: str, ylabel: str,
             methods: Mapping[str, Points], logx: bool = False, baseline: str | None = None,
             join: bool = True) -> Path:
    """Each method's points (x, y, label), labelled (e.g. K or an index kind) and joined by a
    line unless ``join`` is False; ``baseline`` is drawn dashed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    for i, (name, pts) in enumerate(methods.items()):
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        line = ("--" if name == baseline else "-") if join else "none"
        ax.plot(xs, ys, linestyle=line, marker="o", color=f"C{i}", label=name,
                markersize=5, linewidth=1.3)
        for x, y, label in pts:
            if label:
                ax.annotate(label, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if logx:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)
