"""The one progress helper: every step that can take more than a few seconds (fitting features,
encoding, index build / add, export, evaluation, MOBIUS teacher scoring, simulation, training)
wraps its loop in :func:`progress`.

A tqdm bar is drawn only on an interactive stderr and when nobody asked for quiet
(``twotower --quiet ...``, :func:`set_quiet`, or ``TWOTOWER_QUIET=1``); otherwise the wrapper is
silent and costs nothing. Bars appear after ``delay`` seconds, so short steps never flash one.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Iterable, Iterator, TextIO

_quiet = False


def set_quiet(quiet: bool = True) -> None:
    """Turn every progress bar of this process off (or back on)."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet or os.environ.get("TWOTOWER_QUIET", "").lower() not in ("", "0", "false", "no")


def bars_enabled(file: TextIO | None = None) -> bool:
    """Bars are drawn when not quiet and the stream (default stderr) is a terminal."""
    if is_quiet():
        return False
    stream = file if file is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or exotic stream
        return False


class Silent:
    """What :func:`progress` returns when no bar is drawn: the iterable, plus tqdm's methods."""

    def __init__(self, iterable: Iterable | None = None):
        self.iterable = iterable
        self.n = 0

    def __iter__(self) -> Iterator:
        return iter(self.iterable if self.iterable is not None else ())

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "Silent":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str | None = None,
             unit: str = "it", enabled: bool = True, initial: int = 0, leave: bool = False,
             delay: float = 1.0, file: TextIO | None = None):
    """``for x in progress(xs, desc="encoding items"):`` or ``with progress(total=n) as bar:``.

    ``enabled=False`` (e.g. ``train.progress: false``) forces the silent wrapper; ``file`` is
    the stream to draw on (stderr by default; a bar is drawn only if it is a terminal).
    """
    if not enabled or not bars_enabled(file):
        return Silent(iterable)
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave,
                delay=delay, file=file if file is not None else sys.stderr, dynamic_ncols=True)


def chunk_starts(n: int, size: int, desc: str | None = None, unit: str = "it") -> Iterable[int]:
    """``range(0, n, size)`` under a bar counting the ``n`` rows (each chunk advances ``size``)."""
    bar = progress(total=n, desc=desc, unit=unit)
    if isinstance(bar, Silent):
        return range(0, n, size)

    def gen() -> Iterator[int]:
        try:
            for start in range(0, n, size):
                yield start
                bar.update(min(size, n - start))
        finally:
            bar.close()

    return gen()
