"""`report`'s progress bar while it reads a day's files: for a person at a terminal only.

`rich` is imported here, inside the bar, and this module only by the `report` command: the daemon never
loads it (a test holds `streaming_runner`'s imports to that). On a pipe, a file or a test's capture the
bar is not drawn at all, so what `report` prints stays plain text.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO

MIN_FILES = 50     # fewer are read in well under a second: a bar would only flicker


@contextmanager
def file_progress(total: int, stream: TextIO | None = None) -> Iterator[Callable[[int], None]]:
    """Yields `advance(files_read)`; draws a transient bar on `stream` (stderr) when it is a terminal and
    there are at least MIN_FILES files."""
    stream = stream or sys.stderr
    if total < MIN_FILES or not stream.isatty():
        yield lambda files_read: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    columns = (TextColumn("reading the day's files"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(file=stream), transient=True) as progress:
        task = progress.add_task("read", total=total)
        yield lambda files_read: progress.advance(task, files_read)
