"""File I/O: atomic writes (a reader, or a retried job, sees the old file or the new one, never half),
and input reads whose errors name the file and what it was for."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile


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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str, text: str, *, fsync: bool = True) -> None:
    write_bytes(path, text.encode("utf-8"), fsync=fsync)


GiB = 1 << 30
MAX_INPUT_BYTES = 4 * GiB  # a model or a YAML larger than this is refused, not read
VOLUME_ERRORS = (errno.EIO, errno.ESTALE, errno.ETIMEDOUT)  # the volume's trouble, not the input's: retryable


def read_input(path: str, error: type[Exception], what: str, max_bytes: int = MAX_INPUT_BYTES) -> bytes:
    """The bytes of an input file; anything but a readable regular file of at most ``max_bytes`` raises
    ``error`` naming it.

    Opened non-blocking, so a FIFO or a device never hangs the job, and read with a bound, so
    ``/dev/zero`` or a file that grows under us cannot exhaust memory."""
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
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"{path}: {what} path is a folder, expected a file")
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: {what} path is {_kind(st.st_mode)}, not a regular file")
        if st.st_size > max_bytes:
            raise error(f"{path}: {what} file is {st.st_size} bytes, more than the {max_bytes} allowed")
        try:
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            if exc.errno in VOLUME_ERRORS:
                raise
            raise error(f"{path}: cannot read {what} file: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise error(f"{path}: {what} file grew past the {max_bytes} bytes allowed while being read")
    return data


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"
