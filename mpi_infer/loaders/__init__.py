"""The two interchangeable loaders that turn a shard's files into the network's input.

- ``opencv`` (opencv.py): ECVL's recipe re-implemented with OpenCV, everywhere pip works; the default;
- ``ecvl`` (ecvl.py): ECVL's own ``DLDataset``, where pyecvl imports (the DeepHealth images); for DICOM, NIfTI
  and volumes, ECVL's ``ImRead`` through our loader (ecvl_files.py).

Both give the same per-image scores (tests/loaders); imagefiles.py holds the file rules they share.
"""

from __future__ import annotations

from typing import Any


def open_loader(kind: str, profile: Any, classes: list[str] | None = None, max_pixels: int | None = None,
                medical: str = "", slice_order: str = "yaml") -> Any:
    """ECVL's DLDataset loader (ECVL's reader through our loader for DICOM, NIfTI and volumes: ``medical``), or
    None for our OpenCV loader (the runner's default)."""
    if kind == "ecvl" and medical:
        from .ecvl_files import EcvlFilesLoader

        return EcvlFilesLoader(profile, **({"max_pixels": max_pixels} if max_pixels else {}), slice_order=slice_order)
    if kind == "ecvl":
        from ..errors import ConfigError
        from .ecvl import EcvlLoader

        if profile.intensity != "255":  # ECVL's AugToFloat32(255) is the only step its loader path has here
            raise ConfigError(f"--intensity {profile.intensity} (profile {profile.name}) is read by the OpenCV "
                              f"loader; ECVL's DLDataset path divides by 255: use --loader opencv")

        return EcvlLoader(profile, classes, **({"max_pixels": max_pixels} if max_pixels else {}))
    return None
