"""``python -m mpi_infer``: the same as the ``mpi_infer`` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
