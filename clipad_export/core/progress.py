"""Progress display for long work (rich, on stderr); silent when disabled."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

Advance = Callable[[int], None]


class Tasks:
    """Adds progress bars; ``add(description, total)`` returns a function advancing that bar."""

    def __init__(self, progress: Progress | None):
        self._progress = progress

    def add(self, description: str, total: int) -> Advance:
        if self._progress is None:
            return lambda n: None
        task = self._progress.add_task(description, total=total)
        return lambda n: self._progress.advance(task, n)  # type: ignore[union-attr]


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[Tasks]:
    if not enabled:
        yield Tasks(None)
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        yield Tasks(progress)
