"""Metric tables printed by the command line and the demo."""
from __future__ import annotations


def print_metrics(title: str, rows: dict[str, dict], columns: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("model")
    for c in columns:
        table.add_column(c, justify="right")
    for name, m in rows.items():
        table.add_row(name, *[f"{m[c]:.4f}" if isinstance(m.get(c), float) else str(m.get(c, "-"))
                              for c in columns])
    Console(width=max(100, 14 * (len(columns) + 1))).print(table)
