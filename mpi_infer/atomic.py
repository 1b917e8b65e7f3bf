"""File I/O: atomic writes (a reader, or a retried job, sees the old file or the new one, never half),
and input reads whose errors name the file and what it was for."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from typing import BinaryIO, TextIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()  # what a plain open() would give; mkstemp alone would leave 0600


def write_bytes(path: str, data: bytes, *, fsync: bool = True) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        os.fchmod(fd, _MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise with_path(exc, path) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def with_path(exc: OSError, path: str) -> OSError:
    """The same OS error, naming the file: a write's ENOSPC or EIO otherwise names none."""
    if exc.filename is None and exc.errno is not None:
        return type(exc)(exc.errno, exc.strerror, path)
    return exc


def open_append(path: str) -> TextIO:
    """``path`` opened for appending text, never through a symlink: in a shared output folder a planted link would
    make us append to any file it names (OSError ELOOP instead)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    return os.fdopen(fd, "a", encoding="utf-8")


def write_text(path: str, text: str, *, fsync: bool = True) -> None:
    write_bytes(path, text.encode("utf-8"), fsync=fsync)


GiB = 1 << 30
MAX_INPUT_BYTES = 4 * GiB  # a model or a YAML larger than this is refused, not read
VOLUME_ERRORS = (errno.EIO, errno.ESTALE, errno.ETIMEDOUT)  # the volume's trouble, not the input's: retryable


def open_input(path: str, error: type[Exception], what: str, max_bytes: int = MAX_INPUT_BYTES) -> BinaryIO:
    """An input file opened for reading; anything but a readable regular file of at most ``max_bytes`` raises
    ``error`` naming it. Opened non-blocking, so a FIFO or a device never hangs the job."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise error(f"{path}: {what} file does not exist") from None
    except IsADirectoryError:
        raise error(f"{path}: {what} path is a folder, expected a file") from None
    except OSError as exc:
        if exc.errno in VOLUME_ERRORS:
            raise  # a flaky volume: retryable (exit 200), not the input's fault
        raise error(f"{path}: cannot open {what} file: {exc.strerror or exc}") from exc
    fh = os.fdopen(fd, "rb")
    st = os.fstat(fd)
    problem = None
    if stat.S_ISDIR(st.st_mode):
        problem = f"{path}: {what} path is a folder, expected a file"
    elif not stat.S_ISREG(st.st_mode):
        problem = f"{path}: {what} path is {_kind(st.st_mode)}, not a regular file"
    elif st.st_size > max_bytes:
        problem = f"{path}: {what} file is {st.st_size} bytes, more than the {max_bytes} allowed"
    if problem:
        fh.close()
        raise error(problem)
    return fh


def read_chunks(fh: BinaryIO, path: str, error: type[Exception], what: str, max_bytes: int,
                chunk: int = 1 << 20) -> Iterator[bytes]:
    """The file's bytes in chunks, never more than ``max_bytes`` in all (a file growing under us is refused)."""
    total = 0
    while True:
        try:
            block = fh.read(chunk)
        except OSError as exc:
            if exc.errno in VOLUME_ERRORS:
                raise
            raise error(f"{path}: cannot read {what} file: {exc.strerror or exc}") from exc
        if not block:
            return
        total += len(block)
        if total > max_bytes:
            raise error(f"{path}: {what} file grew past the {max_bytes} bytes allowed while being read")
        yield block


def read_input(path: str, error: type[Exception], what: str, max_bytes: int = MAX_INPUT_BYTES) -> bytes:
    """The bytes of an input file (see ``open_input``), read with a bound, so ``/dev/zero`` or a file that
    grows under us cannot exhaust memory."""
    with open_input(path, error, what, max_bytes) as fh:
        return b"".join(read_chunks(fh, path, error, what, max_bytes))


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"
