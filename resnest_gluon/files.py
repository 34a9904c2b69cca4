"""Files read and written safely: only regular files are read, and only up to a size cap; a written file
is checked (size, and a caller's load) before it replaces anything, and a write error is one line.

A FIFO named ``a.jpg`` blocks ``open()`` forever, and a symlink to ``/dev/zero`` reads until memory runs
out: :func:`read_regular` opens without blocking, looks at what it opened (``fstat``, so a symlink is
judged by its target) and reads a regular file only. ``mx.nd.save`` and ``fclose`` leave a write that
fails in its last kilobytes unnoticed: :func:`verified_replace` checks the temporary file before the rename,
so a truncated file never lands under a final name. :func:`replace_together` does the same for the files of
one export (graph, weights, metadata): every one is checked before the first is renamed.
"""

import contextlib
import errno
import os
import shutil
import stat
from typing import Callable, NamedTuple, Optional, Sequence

from .errors import UserError

__all__ = [
    "IMAGE_EXTS",
    "MAX_IMAGE_BYTES",
    "NotRegularFile",
    "Staged",
    "WriteFailed",
    "check_written",
    "file_problem",
    "free_space",
    "read_regular",
    "replace_together",
    "verified_replace",
    "write_failed",
]

#: the image types every tool reads (im2rec --list, predict): what OpenCV decodes in the pip wheel
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: the largest image file read (an image of 2^30 pixels, OpenCV's own limit, needs far less)
MAX_IMAGE_BYTES = 1 << 30


class NotRegularFile(ValueError):
    """A path that is not a regular file (a FIFO, a device, a socket, a folder) or is over the size cap."""


class WriteFailed(UserError):
    """A file could not be written completely (disk full, quota, I/O error); nothing was replaced.

    ``path`` is the file named, ``reason`` why it failed (without the free space and the advice)."""

    def __init__(self, message: str, path: str = "", reason: str = ""):
        super().__init__(message)
        self.path, self.reason = path, reason


def _kind(mode: int) -> Optional[str]:
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def file_problem(path: str, max_bytes: int = MAX_IMAGE_BYTES) -> Optional[str]:
    """Why ``path`` (symlinks followed) cannot be read as a data file, or None: ``"a FIFO (named pipe)"``,
    ``"a device"``, ``"a socket"``, ``"a folder"``, ``"broken or looping symlink"``,
    ``"larger than N bytes"``."""
    try:
        st = os.stat(path)
    except OSError as err:
        if os.path.islink(path):
            return "broken or looping symlink"
        return err.strerror or str(err)
    kind = _kind(st.st_mode)
    if kind:
        return kind
    if st.st_size > max_bytes:
        return f"larger than {max_bytes} bytes ({st.st_size})"
    return None


def read_regular(path: str, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of regular file ``path``, at most ``max_bytes`` of them.

    Opened with ``O_NONBLOCK`` (a FIFO without a writer does not block the open) and judged by ``fstat`` of
    what was opened (a symlink to ``/dev/zero`` is a device).

    Raises
    ------
    NotRegularFile
        For anything but a regular file, or a file larger than ``max_bytes``.
    OSError
        When the file cannot be opened or read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        kind = _kind(st.st_mode)
        if kind:
            raise NotRegularFile(f"{kind}, not an image file")
        if st.st_size > max_bytes:
            raise NotRegularFile(f"larger than the {max_bytes}-byte cap ({st.st_size} bytes)")
        os.set_blocking(fd, True)
        chunks, size = [], 0
        while True:
            chunk = os.read(fd, min(1 << 24, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:  # grew while read
                raise NotRegularFile(f"larger than the {max_bytes}-byte cap")
        return b"".join(chunks)
    finally:
        os.close(fd)


def free_space(path: str) -> str:
    """``"N MiB free"`` on the filesystem of ``path`` (or of its folder), or ``"free space unknown"``."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "free space unknown"
    return f"{free / 2**20:.1f} MiB free"


def _first_line(err) -> str:
    """The reason of ``err`` (an exception or a text) on one line."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("Traceback"):  # an MXNetError: the reason is its last line
        lines = [lines[-1].split(": ")[-1]]
    return lines[0] if lines else repr(err)


def write_failed(path: str, err) -> WriteFailed:
    """The one-line error for a failed write of ``path`` (``err``: an exception or a reason)."""
    reason = getattr(err, "strerror", None) or _first_line(err)
    return WriteFailed(
        f"cannot write {path}: {reason} ({free_space(path)}); nothing was replaced. Free some space "
        "or choose another folder, then run again",
        path,
        reason,
    )


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


class Staged(NamedTuple):
    """A file written to ``tmp`` that is to replace ``path`` once it is on disk, of ``size`` bytes when
    given (else not empty), and passes ``check(tmp)`` (a load, say; any exception fails it)."""

    tmp: str
    path: str
    check: Optional[Callable[[str], None]] = None
    size: Optional[int] = None


def _verify(staged: Staged) -> None:
    """Raises OSError when ``staged.tmp`` is not on disk complete and readable."""
    fd = os.open(staged.tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
        actual = os.fstat(fd).st_size
    finally:
        os.close(fd)
    size = staged.size
    if (size is None and actual == 0) or (size is not None and actual != size):
        expected = f"{size} bytes" if size is not None else "some bytes"
        raise OSError(errno.EIO, f"the file was cut short ({actual} bytes written, {expected} expected)")
    if staged.check is not None:
        try:
            staged.check(staged.tmp)
        except Exception as err:  # noqa: BLE001 - any failure to read it back means a bad write
            reason = _first_line(err).replace(staged.tmp, "it")  # the temporary name means nothing to a user
            raise OSError(errno.EIO, f"the written file does not read back ({reason})") from None


def check_written(staged: Staged) -> Staged:
    """Checks ``staged`` now, as :func:`replace_together` would, for a file that is read before it is
    renamed (an operator check, say). On failure removes its temporary file and raises :class:`WriteFailed`
    naming its final path. Returns it with its size fixed and no check left to run."""
    try:
        _verify(staged)
    except OSError as err:
        _remove(staged.tmp)
        raise write_failed(staged.path, err) from None
    return Staged(staged.tmp, staged.path, None, os.path.getsize(staged.tmp))


def _sync_folder(path: str) -> None:
    """Flushes the folder entry of ``path`` (its rename) to disk, where the filesystem allows."""
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a folder
        pass
    finally:
        os.close(fd)


def replace_together(files: Sequence[Staged]) -> None:
    """Replaces the files of one set (an export's graph, weights and metadata) only once every one of them
    is checked.

    Each temporary file is flushed to disk and checked in the order given (size, then ``check``). When one
    fails, every temporary file is removed, no final file is touched, and :class:`WriteFailed` names the
    final file that failed and the free space. Then the files are renamed in the order given, with Ctrl-C
    and SIGTERM held back until the last rename, and the renames are flushed to disk. Only a SIGKILL or a
    power cut between two renames can leave the first files of the list new and the others old: list the
    file that names the set (the graph a loader opens first) after the files it needs.
    """
    from .interrupts import held_signals

    current = None
    try:
        for current in files:
            _verify(current)
        with held_signals() if len(files) > 1 else contextlib.nullcontext():  # one rename is atomic
            for current in files:
                os.replace(current.tmp, current.path)
    except OSError as err:
        for staged in files:
            _remove(staged.tmp)
        raise write_failed(current.path, err) from None
    for folder in {os.path.dirname(os.path.abspath(f.path)): f.path for f in files}.values():
        _sync_folder(folder)


def verified_replace(
    tmp: str, path: str, check: Optional[Callable[[str], None]] = None, size: Optional[int] = None
) -> None:
    """Renames the written ``tmp`` to ``path`` once it is on disk (fsync), of ``size`` bytes when given
    (else not empty), and passes ``check(tmp)`` (a load, say; any exception fails it). Otherwise removes
    ``tmp``, leaves ``path`` as it was and raises :class:`WriteFailed` naming ``path`` and the free space."""
    replace_together([Staged(tmp, path, check, size)])


def stage_bytes(
    path: str, data: bytes, check: Optional[Callable[[str], None]] = None, tmp: Optional[str] = None
) -> Staged:
    """Writes ``data`` to ``tmp`` (default ``path.tmp``), staged to replace ``path`` once it has ``len(data)``
    bytes on disk and passes ``check`` (:func:`replace_together`). A failed write removes ``tmp`` and raises
    :class:`WriteFailed` naming ``path``."""
    tmp = tmp or path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
    except OSError as err:
        _remove(tmp)
        raise write_failed(path, err) from None
    return Staged(tmp, path, check, len(data))


def write_bytes(path: str, data: bytes, check: Optional[Callable[[str], None]] = None) -> None:
    """Writes ``data`` to ``path`` through ``path.tmp``, verified and renamed (:func:`stage_bytes`)."""
    replace_together([stage_bytes(path, data, check)])
