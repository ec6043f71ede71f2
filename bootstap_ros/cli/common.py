"""What the command-line tools share: exit codes, output path checks and progress reports.

Exit codes follow one rule in every tool (bootstap-track, bootstap-queries, bootstap-eval):

    0  success
    1  a failure while running (out of memory, a device error, a disk that fills up)
    2  bad arguments or a bad input the user gave (a missing or malformed file, a flag
       that does not apply): fix the command or the file and run it again

argparse already exits with 2 for a malformed command line; `run_command` maps the rest.
Every input problem the package reports is a ValueError subclass (CheckpointError,
VideoError, QueryError, QuerySetError, DatasetFormatError, FrameError, UsageError) whose
message says what was expected, what was found and what to do.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional, TextIO

EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(ValueError):
    """Arguments that cannot work together or an output path that cannot be written."""


def run_command(prog: str, run: Callable[[], object]) -> int:
    """`run()`, with the package's expected errors turned into a message and an exit code: its
    own status when it returns an int, else 0; EXIT_USAGE for a ValueError or a missing file
    (their messages say what to change), EXIT_FAILURE for an error while running. The training
    commands use it too, so every tool of the project answers the same error the same way."""
    try:
        status = run()
    except (ValueError, FileNotFoundError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, OSError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


def prepare_output(path, option: str, folder: bool = False) -> Path:
    """Check, before any work, that `path` (given as `option`) can be written, and create
    its missing parent folders (as `mkdir -p`); with `folder`, the path is itself a folder
    to write into. UsageError says what is in the way."""
    path = Path(path).expanduser()
    if not folder and path.is_dir():
        raise UsageError(f"{option} {path} is a folder; give a file path inside it, e.g. "
                         f"{path / ('out' + (path.suffix or '.npz'))}")
    if folder and path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file, not a folder; give a folder path")
    directory = path if folder else path.parent
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{option} {path}: {existing} is a file, not a folder; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: cannot write in {existing} (permission denied); choose "
                         "another path")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{option} {path}: cannot create the folder {directory} ({error.strerror or error}); "
                         "choose another path") from None
    return path


class Progress:
    """Progress of a long loop on stderr: tqdm's bar on a terminal; off a terminal (a log
    file, a pipe) one plain line every 10% of `total` and at least every `every_s` seconds,
    so that a log shows how far a run got without a wall of carriage returns."""

    def __init__(self, total: Optional[int], desc: str, unit: str = "frame", every_s: float = 30.0,
                 stream: Optional[TextIO] = None):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.stream = stream or sys.stderr
        self.count = 0
        self._bar = None
        if _is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit=unit, desc=desc, file=self.stream)
        self._start = self._last_time = time.perf_counter()
        self._last_tenth = 0
        self._printed_at = 0  # the count the last line showed

    def update(self, count: int = 1) -> None:
        self.count += count
        if self._bar is not None:
            self._bar.update(count)
            return
        now = time.perf_counter()
        tenth = int(10 * self.count / self.total) if self.total else 0
        if tenth > self._last_tenth or now - self._last_time >= self.every_s:
            self._line(now)
            self._last_tenth, self._last_time = tenth, now

    def set_total(self, total: int) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def _line(self, now: float) -> None:
        elapsed = now - self._start
        total = self.total or 0
        done = f"{self.count}/{total} {self.unit}s ({min(100, 100 * self.count // total)}%)" if total \
            else f"{self.count} {self.unit}s"
        rate = self.count / elapsed if elapsed > 0 else 0.0
        print(f"{self.desc}: {done}, {rate:.1f} {self.unit}s/s, {elapsed:.0f} s", file=self.stream,
              flush=True)
        self._printed_at = self.count

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.count != self._printed_at:
            self._line(time.perf_counter())  # the last line shows where the loop ended

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
