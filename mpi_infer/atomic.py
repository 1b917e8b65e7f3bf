"""File I/O: atomic writes (a reader, or a retried job, sees the old file or the new one, never half),
and input reads whose errors name the file and what it was for."""

from __future__ import annotations

import contextlib
import os
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


def read_input(path: str, error: type[Exception], what: str) -> bytes:
    """The bytes of an input file; a missing or unreadable one raises ``error`` naming it."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise error(f"{path}: {what} file does not exist") from None
    except IsADirectoryError:
        raise error(f"{path}: {what} path is a folder, expected a file") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what} file: {exc.strerror}") from exc
