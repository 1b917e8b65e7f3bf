"""A FUSE filesystem with one file whose reads never return, as on a stale NFS mount (tests/mpirun/test_stall.py).

    python tests/helpers/stuck_fuse.py MOUNTPOINT SOURCE_FILE   # serves MOUNTPOINT/stuck.jpg, SOURCE_FILE's size
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import threading

from fuse import FUSE, Operations


class Stuck(Operations):
    def __init__(self, size: int):
        self.size = size

    def getattr(self, path, fh=None):
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        if path == "/stuck.jpg":
            return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": self.size}
        raise OSError(errno.ENOENT, "")

    def readdir(self, path, fh):
        return [".", "..", "stuck.jpg"]

    def open(self, path, flags):
        return 0

    def read(self, path, size, offset, fh):
        threading.Event().wait()  # never answers


if __name__ == "__main__":
    FUSE(Stuck(os.path.getsize(sys.argv[2])), sys.argv[1], foreground=True, ro=True)
