"""Where the product's lines go: the terminal, a log file, or both (`augment --quiet`, `--verbose`, `--log-file`).

The CLI runs each command inside one `session`. Inside it:
 - stdout (progress lines) reaches the terminal unless `quiet`; `summary` (a command's final result) always does;
 - stderr (warnings and errors) always reaches the terminal;
 - with a log file, every line written to either, the ones `quiet` hides included, is appended to it, after a
   header line naming the command and the time.
`verbose()` says whether Ray is to forward its own logs (its workers' output, Ray Train's and Ray Data's lines) to
this process (augment.core.cluster.init_ray); otherwise they stay in Ray's session log folder
(/tmp/ray/session_latest/logs on a local instance), and the product's own worker lines reach the driver through
augment.core.cluster.relayed_lines. Outside a session (augment used from Python) nothing is redirected: `summary`
prints to stdout, `quiet()` and `verbose()` are False.
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
import time
from dataclasses import dataclass
from typing import Iterator, TextIO

from augment.core.errors import AugmentError


class _Tee(io.TextIOBase):
    """A text stream that writes to each of `targets`; a terminal-like stream for isatty/fileno (`terminal`)."""

    def __init__(self, targets: list[TextIO], terminal: TextIO) -> None:
        super().__init__()
        self._targets, self._terminal = targets, terminal
        self._lock = threading.Lock()  # Ray's and the relay's threads write too: keep each write whole

    def write(self, text: str) -> int:
        with self._lock:
            for target in self._targets:
                target.write(text)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            for target in self._targets:
                target.flush()

    def isatty(self) -> bool:
        return bool(self._terminal in self._targets and self._terminal.isatty())

    def fileno(self) -> int:
        return self._terminal.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._terminal, "encoding", None) or "utf-8"


@dataclass
class _Session:
    quiet: bool
    verbose: bool
    summary: TextIO


_session: _Session | None = None


@contextlib.contextmanager
def session(command: str, quiet: bool = False, verbose: bool = False, log_file: str | None = None) -> Iterator[None]:
    """Route this process's stdout and stderr as the module docstring says until the block ends (then restore
    them). `log_file` is a local path, opened for appending (AugmentError when it cannot be)."""
    global _session
    if quiet and verbose:
        raise AugmentError("--quiet and --verbose exclude each other; give one")
    log = _open_log(log_file, command) if log_file else None
    out, err, previous = sys.stdout, sys.stderr, _session
    extra = [log] if log is not None else []
    sys.stdout = _Tee(([] if quiet else [out]) + extra, out)
    sys.stderr = _Tee([err] + extra, err)
    _session = _Session(quiet, verbose, _Tee([out] + extra, out))
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stdout, sys.stderr, _session = out, err, previous
        if log is not None:
            log.close()


def _open_log(path: str, command: str) -> TextIO:
    if "://" in path:
        raise AugmentError(f"--log-file {path}: a log file must be a local path")
    try:
        log = open(path, "a", encoding="utf-8", buffering=1)
    except OSError as exc:
        raise AugmentError(f"--log-file {path}: cannot append to it ({exc.strerror or exc})") from None
    log.write(f"--- {command} ({time.strftime('%Y-%m-%d %H:%M:%S')}) ---\n")
    return log


def summary(text: str) -> None:
    """Print a command's final result: on the terminal even with --quiet, and in the log file."""
    print(text, file=_session.summary if _session else sys.stdout, flush=True)


def quiet() -> bool:
    """Whether progress lines are kept off the terminal (--quiet)."""
    return bool(_session and _session.quiet)


def verbose() -> bool:
    """Whether Ray's own logs are to reach this process (--verbose)."""
    return bool(_session and _session.verbose)
