"""Progress bars that suit where they are written: a live bar on a terminal, a line now and then in a
log file or a pipe (a demo's log, CI, ``horovodrun``'s per-rank output, ``script > out.txt``)."""

import sys

from tqdm import tqdm

__all__ = ["progress_bar"]


class _Lines:
    """A text stream that turns tqdm's carriage-return redraws into whole lines."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:  # tqdm clears a bar with a line of blanks: nothing to log
            self._stream.write(line + "\n")

    def flush(self) -> None:
        self._stream.flush()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable=None, *, file=None, log_interval: float = 30.0, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on a terminal; elsewhere a plain line at most every ``log_interval`` s.

    ``file`` defaults to standard error, as tqdm's does.
    """
    file = sys.stderr if file is None else file
    if not _is_terminal(file):
        file = _Lines(file)
        kwargs.setdefault("mininterval", log_interval)
        kwargs.setdefault("maxinterval", max(log_interval, 10.0))
        kwargs.setdefault("ncols", 100)
    return tqdm(iterable, file=file, **kwargs)
