"""Sample weights from several objectives: a small arithmetic language over a log's columns.

``1 + 0.5*log1p(dwell) + 2*conversion`` weighs an example by its engagement as well as its click,
so retrieval learns what the later stages reward (longer watch, more conversions), not clicks
alone. The expression is parsed with Python's ``ast`` into a tree of whitelisted nodes — numbers,
column names, ``+ - * / **``, unary minus and a few functions — and evaluated by walking that
tree over NumPy columns: nothing is ever passed to ``eval`` or ``exec``, so a config can name
columns and do arithmetic and nothing else (no attributes, subscripts, calls of other names,
comprehensions or lambdas). Unknown names are refused with the columns that exist.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass

import numpy as np

from twotower.errors import ConfigError

FUNCTIONS = {
    "log1p": np.log1p, "log": np.log, "exp": np.exp, "sqrt": np.sqrt, "abs": np.abs,
    "min": np.minimum, "max": np.maximum, "clip": np.clip,
}
_ARITY = {"min": 2, "max": 2, "clip": 3}
_BINARY = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide,
           ast.Pow: np.power}


@dataclass(frozen=True)
class WeightExpression:
    """A parsed, validated weight expression; ``columns`` are the names it reads."""

    text: str
    tree: ast.Expression
    columns: tuple[str, ...]

    def evaluate(self, table: dict[str, np.ndarray], rows: int) -> np.ndarray:
        """float64[rows] weights; refuses a NaN, infinite or negative result, naming the row."""
        with np.errstate(all="ignore"):
            out = np.broadcast_to(np.asarray(_eval(self.tree.body, table), dtype=np.float64),
                                  (rows,)).copy()
        bad = ~np.isfinite(out) | (out < 0)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ConfigError(f"data.weight_expression {self.text!r}: row {row} gives {out[row]} "
                              f"(weights must be finite and >= 0); {int(bad.sum())} such rows")
        return out


def parse_weight_expression(text: str, available: list[str] | None = None) -> WeightExpression:
    """Parse ``text``; ``available`` (the log's columns) makes an unknown name a ConfigError."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("data.weight_expression: expected a non-empty expression such as "
                          "'1 + 0.5*log1p(dwell)'")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ConfigError(f"data.weight_expression {text!r}: not an expression ({err.msg})") from None
    names: list[str] = []
    _check(tree.body, text, names)
    if available is not None:
        unknown = [n for n in names if n not in available]
        if unknown:
            raise ConfigError(f"data.weight_expression {text!r}: unknown column {unknown[0]!r}; "
                              f"the log has: {', '.join(available)}")
    return WeightExpression(text, tree, tuple(dict.fromkeys(names)))


def _check(node: ast.AST, text: str, names: list[str]) -> None:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ConfigError(f"data.weight_expression {text!r}: only numbers are allowed as "
                              f"constants, got {node.value!r}")
    elif isinstance(node, ast.Name):
        if node.id in FUNCTIONS:
            raise ConfigError(f"data.weight_expression {text!r}: {node.id} is a function: call it")
        names.append(node.id)
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        _check(node.left, text, names)
        _check(node.right, text, names)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        _check(node.operand, text, names)
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS:
        want = _ARITY.get(node.func.id, 1)
        if node.keywords or len(node.args) != want:
            raise ConfigError(f"data.weight_expression {text!r}: {node.func.id}() takes {want} "
                              "positional argument(s)")
        for arg in node.args:
            _check(arg, text, names)
    else:
        what = ast.unparse(node) if hasattr(ast, "unparse") else type(node).__name__
        raise ConfigError(f"data.weight_expression {text!r}: {what!r} is not allowed (numbers, "
                          f"column names, + - * / **, and {', '.join(FUNCTIONS)} only)")


def _eval(node: ast.AST, table: dict[str, np.ndarray]):
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return np.asarray(table[node.id], dtype=np.float64)
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_eval(node.left, table), _eval(node.right, table))
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, table)
        return -value if isinstance(node.op, ast.USub) else value
    assert isinstance(node, ast.Call)  # _check admitted nothing else
    return FUNCTIONS[node.func.id](*[_eval(a, table) for a in node.args])
