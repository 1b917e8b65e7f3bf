"""Preprocessing recipes: what a model was trained with, as named presets (the use cases'
recipes: deephealthproject/use-case-pipelines python/skin_lesion_*_training.py).

A profile fixes everything between the file and the tensor, so the same model gives the same scores
whatever backend runs it: the channels (3: RGB order, grey replicated; 1: grey, colour converted, ECVL's
ColorType::GRAY), the intensity step (``255``: /255, ECVL's AugToFloat32(255); ``minmax``: each image's own
min-max to 0..255 (uint8) before the resize, then /255; ``raw``: the values as read, a CT's Hounsfield units),
the resize on the read type with this interpolation (masks always nearest), then (x - mean) / std per channel
when mean and std are set, CHW. The channels follow the model's input (stages/prepare.py): on a set of volumes
a model taking K > 1 channels gets K consecutive slices per sample (``slices``), each one grey channel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from .errors import ConfigError

INTERPOLATIONS = ("nearest", "linear", "area", "cubic", "lanczos4")
INTENSITIES = ("255", "minmax", "raw")


@dataclass(frozen=True)
class Profile:
    name: str
    height: int
    width: int
    interpolation: str = "linear"
    mean: tuple[float, ...] | None = None  # one value per channel (or one for every channel)
    std: tuple[float, ...] | None = None
    threshold: float = 0.5
    description: str = ""
    channels: int = 3  # 3: RGB, 1: grey (from the model's input)
    intensity: str = "255"  # 255 | minmax | raw
    source: str = ""  # the upstream file the recipe comes from
    slices: int = 1  # a volume's consecutive slices per sample, one channel each (the MS pipeline's in_channels)

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ConfigError(f"profile {self.name}: size must be positive, got {self.height}x{self.width}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"profile {self.name}: interpolation must be one of {INTERPOLATIONS}, "
                              f"got {self.interpolation!r}")
        if (self.mean is None) != (self.std is None):
            raise ConfigError(f"profile {self.name}: give both mean and std, or neither")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ConfigError(f"profile {self.name}: std must be positive, got {self.std}")
        if self.channels not in (1, 3):
            raise ConfigError(f"profile {self.name}: a model takes 1 (grey) or 3 (RGB) channels, got {self.channels}")
        if self.slices < 1 or (self.slices > 1 and self.channels != 1):
            raise ConfigError(f"profile {self.name}: K slices per sample are K grey channels, got {self.slices} "
                              f"slices of {self.channels} channels")
        if self.intensity not in INTENSITIES:
            raise ConfigError(f"profile {self.name}: intensity must be one of {INTENSITIES}, got {self.intensity!r}")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and len(values) not in (1, self.tensor_channels):
                raise ConfigError(f"profile {self.name}: {key} has {len(values)} values for {self.tensor_channels} "
                                  f"channel(s)")
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"profile {self.name}: threshold must be in (0, 1], got {self.threshold}")

    @property
    def size(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def tensor_channels(self) -> int:
        """The network input's channels: 3 (RGB), 1 (grey), or K (K consecutive slices of a volume)."""
        return self.channels * self.slices

    def to_dict(self) -> dict[str, Any]:
        """The full recipe, as summary.json records it."""
        d = asdict(self)
        for key, default in (("channels", 3), ("intensity", "255"), ("source", ""), ("slices", 1)):
            if d[key] == default:  # absent at their defaults: run.json files written before them still match
                del d[key]
        d["size"] = [self.height, self.width]
        for key in ("mean", "std"):  # lists, as JSON holds them
            d[key] = None if d[key] is None else list(d[key])
        return d


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("segnet-192", 192, 192, "linear", None, None, 0.5,
                "recipe A: the SegNet .bin era (UCP inference script @ff7a6de): 192x192 linear, RGB/255"),
        Profile("unet-224", 224, 224, "cubic", (0.6681, 0.5301, 0.5247), (0.1337, 0.1480, 0.1595), 0.5,
                "recipe B: current Python UNet/ONNX pipeline: 224x224 cubic, ISIC mean/std (ECVL numbers)"),
        Profile("cpp-512", 512, 512, "cubic", (0.67501814, 0.5663187, 0.52339128),
                (0.11092593, 0.10669603, 0.119005), 0.3,
                "recipe C: the C++ pipeline: 512x512 cubic, ISIC mean/std, threshold 0.3"),
        Profile("vgg16-224", 224, 224, "linear", None, None, 0.5,
                "classification, the use case's VGG16 (examples/use_case_pipeline): 224x224 linear, RGB/255"),
        Profile("lenet-64", 64, 64, "linear", None, None, 0.5,
                "classification, the shipped demo LeNet: 64x64 linear, RGB/255"),
        Profile("pneumothorax", 512, 512, "cubic", None, None, 0.5,
                "SIIM pneumothorax segmentation: one 2D DICOM per entry, grey, 512x512 cubic, /255; Dice per image "
                "at 0.5 (eps 1e-6) at the network's resolution", 1, "255",
                "deephealthproject/use-case-pipelines cpp/pneumothorax_segmentation.cpp"),
        Profile("kidney-cls", 224, 224, "cubic", None, None, 0.5,
                "UC11 kidney classification: one 2D DICOM slice per entry, each image's min-max to 0..255, "
                "224x224 cubic, /255, grey; slice accuracy, and per patient (--patient-by)", 1, "minmax",
                "deephealthproject/use-case-pipelines cpp/kidney_classification.cpp"),
        Profile("kidney-seg", 224, 224, "cubic", None, None, 0.5,
                "UC11 kidney segmentation: a volume per entry (per-slice DICOM files, --slice-order reversed to match "
                "the NIfTI label), raw modality values, 224x224 cubic, grey; Dice per slice, mean over slices "
                "(per_volume.csv: 3D Dice)", 1, "raw",
                "deephealthproject/use-case-pipelines cpp/kidney_segmentation.cpp"),
        Profile("ms-seg", 256, 256, "cubic", None, None, 0.5,
                "MS lesions (MSSEG 2016): a NIfTI volume per entry, slices along the third axis, raw values, "
                "256x256 cubic; a model taking K channels gets K consecutive slices per sample (stride K), one "
                "probability map per slice; Dice per slice, mean", 1,
                "raw", "deephealthproject/use-case-pipelines cpp/ms_segmentation_training.cpp"),
        Profile("uc4-lung", 512, 512, "cubic", (0.3266,), (0.3551,), 0.5,
                "UC4 lung nodules: PNG (HU windowed offline), grey, 512x512, /255, mean 0.3266 std 0.3551; "
                "Dice with smooth 1 and IoU per image", 1, "255", "deephealthproject/UC4_pipeline eddl/src"),
        Profile("uc15-cxr", 256, 256, "cubic", None, None, 0.5,
                "UC15 COVID chest X-ray: PNG (MONOCHROME1 inverted offline), grey, 256x256 cubic, /255; "
                "accuracy and balanced accuracy", 1, "255", "deephealthproject/UC15_pipeline pyeddl_pipeline"),
    )
}
DEFAULT_PROFILE = "segnet-192"


def get_profile(
    name: str | None = None,
    *,
    size: tuple[int, int] | None = None,
    interpolation: str | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    threshold: float | None = None,
    channels: int | None = None,
    intensity: str | None = None,
    slices: int | None = None,
) -> Profile:
    """A named profile (default segnet-192), with any field overridden by explicit options."""
    base_name = name or DEFAULT_PROFILE
    if base_name not in PROFILES:
        raise ConfigError(f"unknown profile {base_name!r}; known: {', '.join(PROFILES)}")
    profile = PROFILES[base_name]
    changes: dict[str, Any] = {}
    if size is not None:
        changes["height"], changes["width"] = int(size[0]), int(size[1])
    if interpolation is not None:
        changes["interpolation"] = interpolation
    if mean is not None:
        changes["mean"] = tuple(float(x) for x in mean)
    if std is not None:
        changes["std"] = tuple(float(x) for x in std)
    if threshold is not None:
        changes["threshold"] = float(threshold)
    if intensity is not None:
        changes["intensity"] = intensity
    if (channels is not None and channels != profile.channels) or (slices or 1) > 1:  # from the model and the
        profile = replace(profile, channels=int(channels or profile.channels), slices=int(slices or 1))  # data
    if changes:
        profile = replace(profile, name=profile.name + "+custom", **changes)
    return profile
