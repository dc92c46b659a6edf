"""The progress bar of every long command (``evaluate``, ``encode``): rich's, on stderr so that the JSON
printed on stdout stays parseable."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


@contextmanager
def progress_bar(
    total: int | None, description: str, enabled: bool = True, completed: int = 0
) -> Iterator[Callable[[int], None]]:
    """A bar for ``total`` items (``completed`` already done, e.g. when resuming); yields ``advance(n)``."""
    if not enabled:
        yield lambda n: None
        return
    from rich import progress as rp
    from rich.console import Console

    columns = (rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
               rp.TimeElapsedColumn(), rp.TimeRemainingColumn())
    with rp.Progress(*columns, transient=False, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total, completed=completed)
        yield lambda n: bar.advance(task, n)


def track(
    iterable: Iterable[T], total: int | None, enabled: bool = True, description: str = ""
) -> Iterator[T]:
    """``iterable`` with a bar advancing by one per item."""
    with progress_bar(total, description, enabled) as advance:
        for item in iterable:
            yield item
            advance(1)
