"""Read, check, resize and normalise images and masks exactly as ECVL does, in background threads.

ECVL path (deephealthproject/ecvl modules/core/src/imgcodecs.cpp and support_opencv.cpp, modules/eddl/src/
support_eddl.cpp): cv2 decode with IMREAD_ANYCOLOR (8-bit, alpha dropped),
BGR -> RGB (grey replicated), resize on uint8 with the profile's interpolation (masks: nearest),
float32 / 255, optional (x - mean) / std, CHW. OpenCV releases the GIL while decoding and resizing,
so a few threads keep the next batches ready while the model runs on the current one.

Per-image faults never stop the run: the item comes back with status ``failed`` and a reason, or
``converted`` (scored, with a warning) where the fault is harmless and ECVL would convert too.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..data.worklist import WorkItem
from ..profiles import Profile
from .imagefiles import (
    DEFAULT_MAX_PIXELS,
    TRANSPOSING_ORIENTATIONS,
    ImageFault,
    check_image_file,
    check_pixels,
    exif_orientation,
    png_depth_and_colour,
    read_header,
    truncation_notes,
)
from .medical import READERS, Readers, read_nifti, sniff
from .volumes import VolumeCache, read_label_slice, read_sample, read_slice

CV_INTERP = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "cubic": cv2.INTER_CUBIC,
    "lanczos4": cv2.INTER_LANCZOS4,
}


@dataclass
class Loaded:
    """A work item after loading: network-size pixels, or the reason it failed."""

    item: WorkItem
    image: np.ndarray | None = None  # resized, the profile's channels (H x W x 3 RGB, or H x W grey), as read
    mask: np.ndarray | None = None  # uint8 H x W, 0..255, resized (nearest)
    original_hw: tuple[int, int] | None = None
    status: str = "ok"  # ok | converted | unscored | failed
    notes: list[str] = field(default_factory=list)
    full_mask: np.ndarray | None = None  # uint8 grey at the image's own size (--score-at original only)
    decode_s: float = 0.0  # CPU seconds reading and decoding the files (in a loader thread)
    preprocess_s: float = 0.0  # CPU seconds resizing and checking
    sample: tuple[int, int] | None = None  # a K-slice model: (volume, first slice) of the sample that scores it
    channel: int = 0  # and which of the sample's output maps is this slice's


def decode(path: str, what: str, notes: list[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """ECVL's ImRead (``decode_with_depth`` without the depth)."""
    return decode_with_depth(path, what, notes, max_pixels)[0]


def decode_with_depth(path: str, what: str, notes: list[str], max_pixels: int = DEFAULT_MAX_PIXELS
                      ) -> tuple[np.ndarray, int | None]:
    """ECVL's ImRead: ``cv2.imread(path, IMREAD_ANYCOLOR)`` (8-bit; alpha dropped). Notes what got converted.

    imread, as ECVL calls it, not imdecode on the bytes: libjpeg through imread decodes a JPEG cut short
    inside its scan (grey rows, "Premature end of JPEG file") where imdecode refuses it, and both loaders must
    agree. The file is checked first (a regular file within the bound), so a FIFO or a device never blocks."""
    check_image_file(path, what)
    check_pixels(path, what, max_pixels)
    with open(path, "rb") as fh:
        head = fh.read(32)
    img = cv2.imread(path, cv2.IMREAD_ANYCOLOR)
    if img is None:
        raise ImageFault(f"{what} cannot be decoded (not an image OpenCV reads): {path}")
    if head[:2] == b"\xff\xd8":
        notes += truncation_notes(path, what)
    header = png_depth_and_colour(head)
    if header is None:
        return img, None
    depth, colour = header
    notes += conversion_notes(what, depth, alpha=colour in (4, 6))
    return img, depth


def conversion_notes(what: str, depth: int, alpha: bool) -> list[str]:
    """What ECVL's 8-bit ANYCOLOR read converts, worded once for both loaders."""
    return ([f"{what} is 16-bit; converted to 8-bit as ECVL does (value / 256)"] if depth == 16 else []) + \
           ([f"{what} has an alpha channel; dropped as ECVL does"] if alpha else [])


REDUCED_FLAGS = {2: (cv2.IMREAD_REDUCED_COLOR_2, cv2.IMREAD_REDUCED_GRAYSCALE_2),
                 4: (cv2.IMREAD_REDUCED_COLOR_4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
                 8: (cv2.IMREAD_REDUCED_COLOR_8, cv2.IMREAD_REDUCED_GRAYSCALE_8)}


def read_image(path: str, notes: list[str], reduce_for: tuple[int, int] | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, tuple[int, int]]:
    """An image as decoded (BGR, or grey) and its full (H, W) as displayed; ``to_rgb`` makes it RGB once it is
    network-size.

    ``reduce_for`` (the network's (H, W), with ``--decode reduced``): a JPEG is decoded by libjpeg at 1/2, 1/4 or
    1/8 scale in the DCT domain (OpenCV's IMREAD_REDUCED_*), the largest that keeps both sides at least twice the
    network input; the profile's resize follows. Anything else (PNG, small JPEGs) is decoded exactly."""
    factor, head, orientation = 1, None, None
    if reduce_for is not None:
        head = read_header(path, "image")
        if head is not None and head.format == "jpeg":
            orientation = exif_orientation(path)
            factor = reduction((head.height, head.width), reduce_for, orientation)
            check_pixels(path, "image", max_pixels)
    if factor == 1:
        img = decode(path, "image", notes, max_pixels)
        full = (int(img.shape[0]), int(img.shape[1]))
    else:
        img = cv2.imread(path, REDUCED_FLAGS[factor][head.channels == 1])
        if img is None:
            raise ImageFault(f"image cannot be decoded (not an image OpenCV reads): {path}")
        full = (head.height, head.width)  # as displayed: the decode applies the EXIF rotation, as imread does
        if orientation in TRANSPOSING_ORIENTATIONS:
            full = full[::-1]
    return img, full


def reduction(stored_hw: tuple[int, int], network_hw: tuple[int, int], orientation: int | None) -> int:
    """The largest DCT scale divisor (8, 4, 2) that keeps both displayed sides >= twice the network input."""
    h, w = stored_hw[::-1] if orientation in TRANSPOSING_ORIENTATIONS else stored_hw
    for factor in (8, 4, 2):
        if h // factor >= 2 * network_hw[0] and w // factor >= 2 * network_hw[1]:
            return factor
    return 1


def to_rgb(img: np.ndarray) -> np.ndarray:
    """ECVL's colour order: BGR -> RGB, grey replicated (GRAY -> RGB). The loader swaps BGR after the resize, on
    the small image (resizing treats the three channels alike: the same pixels as swapping first), but replicates
    grey before it (OpenCV's one-channel cubic path rounds a few upscaled pixels differently)."""
    return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB if img.ndim == 2 else cv2.COLOR_BGR2RGB)


def read_planes(paths: Sequence[str], notes: list[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Several same-size grey planes stacked into one image (ECVL's multi-location ``Stack``), in RGB order."""
    planes = [decode(p, f"plane {k}", notes, max_pixels) for k, p in enumerate(paths)]
    if any(p.ndim != 2 for p in planes) or len(planes) != 3:
        raise ImageFault(f"multi-plane image needs 3 grey planes for an RGB model, got "
                         f"{[p.shape for p in planes]}")
    if len({p.shape for p in planes}) != 1:
        raise ImageFault(f"planes differ in size: {[p.shape for p in planes]}")
    return np.dstack(planes)


def read_mask(path: str, image_hw: tuple[int, int], notes: list[str], image_path: str | None = None,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A ground-truth mask as decoded (grey, or BGR), full size, checked against the image's size."""
    mask, depth = decode_with_depth(path, "mask", notes, max_pixels)
    if depth == 16:
        check_deep_mask(path)
    check_mask_size((mask.shape[1], mask.shape[0]), (image_hw[1], image_hw[0]), path, image_path)
    return mask


def grey_mask(mask: np.ndarray, notes: list[str]) -> np.ndarray:
    """A (resized) mask as uint8 grey: a colour mask by ECVL's 0.299R+0.587G+0.114B. Point-wise, so converting
    after the nearest-neighbour resize gives the same pixels as converting the full-size mask."""
    if mask.ndim == 3:
        notes.append("mask is colour; converted to grey with ECVL's 0.299R+0.587G+0.114B")
        b, g, r = (mask[..., k].astype(np.float64) for k in range(3))
        mask = np.clip(np.rint(0.299 * r + 0.587 * g + 0.114 * b), 0, 255).astype(np.uint8)
    return mask


def check_deep_mask(path: str) -> None:
    """A 16-bit mask is read as ECVL reads it, 8-bit (value / 256): one holding 0/255 (or any foreground under
    32768) would become an empty mask and score as one. Refuse it, as a 0/1 label image is refused."""
    deep = cv2.imread(path, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if deep is None or deep.dtype != np.uint16:
        return
    top = int(deep.max())
    if 0 < top < 32768:
        raise ImageFault(f"mask is 16-bit with values 0..{top}: ECVL's 8-bit read (value / 256) leaves every "
                         f"pixel below 128, so it would score as an empty mask; save it as an 8-bit 0/255 PNG "
                         f"(or 16-bit 0/65535): {path}")


def check_mask_size(mask_wh: tuple[int, int], image_wh: tuple[int, int], mask_path: str,
                    image_path: str | None) -> None:
    """The mask must have the decoded image's size; say so when the image's EXIF rotation is the cause."""
    if mask_wh == image_wh:
        return
    why = ""
    orientation = exif_orientation(image_path) if image_path else None
    if orientation in TRANSPOSING_ORIENTATIONS and mask_wh == image_wh[::-1]:
        why = (f" after its EXIF Orientation {orientation} ({TRANSPOSING_ORIENTATIONS[orientation]}) was applied, "
               f"as ECVL's reader (OpenCV imread) does; the mask matches the image as stored "
               f"({mask_wh[0]}x{mask_wh[1]}): rotate the mask the same way, or remove the image's Orientation tag")
    raise ImageFault(f"mask size {mask_wh[0]}x{mask_wh[1]} differs from image size {image_wh[0]}x{image_wh[1]}"
                     f"{why}: {mask_path}")


def mask_notes(mask: np.ndarray, path: str) -> list[str]:
    """The 0/255 convention, checked on the network-size mask that is scored (both loaders check the mask at that
    size): a 0/1 label image is refused (ImageFault), other stray values noted."""
    present = np.bincount(mask.ravel(), minlength=256)
    odd = np.count_nonzero(present[1:255])
    if not odd:
        return []
    top = int(np.flatnonzero(present)[-1])
    if top < 128:
        raise ImageFault(f"mask values are 0..{top}, not 0/255 (a 0/1 label image?); "
                         f"every pixel would binarise to background: {path}")
    return [f"mask has {odd} value(s) other than 0 and 255; binarised at the threshold"]


def read_any(path: str, notes: list[str], reduce_for: tuple[int, int] | None, max_pixels: int,
             readers: Readers = READERS) -> tuple[np.ndarray, tuple[int, int], bool]:
    """An image by its content: DICOM or NIfTI (``readers``: values as ECVL reads them, RGB when colour), else
    OpenCV's formats (BGR when colour). Returns (pixels, (H, W), whether a colour image is BGR)."""
    check_image_file(path, "image")
    kind = sniff(path)
    if kind == "dicom":
        img = readers.dicom(path, notes, max_pixels)
    elif kind == "nifti":
        img = read_nifti(path, notes, readers=readers)
    else:
        img, full = read_image(path, notes, reduce_for, max_pixels)
        return img, full, True
    return img, (int(img.shape[0]), int(img.shape[1])), False


def to_channels(img: np.ndarray, channels: int, bgr: bool, notes: list[str]) -> tuple[np.ndarray, bool]:
    """Full-size pixels with the model's channels, as ECVL's ColorType: a one-channel model gets grey (colour
    converted with ECVL's 0.299R+0.587G+0.114B, noted), a three-channel model RGB (grey replicated, noted, on
    the full-size image: OpenCV's one-channel cubic path rounds a few upscaled pixels differently). Returns the
    pixels and whether they are still BGR (swapped after the resize, on the small image)."""
    if channels == 1:
        if img.ndim == 3:
            notes.append("image is colour; converted to grey (ECVL's 0.299R+0.587G+0.114B) for a one-channel model")
            b, g, r = (img[..., k].astype(np.float64) for k in ((0, 1, 2) if bgr else (2, 1, 0)))
            img = np.rint(0.299 * r + 0.587 * g + 0.114 * b).astype(img.dtype)
        return img, False
    if img.ndim == 2:
        notes.append("image is grey; replicated to RGB")
        return (to_rgb(img) if img.dtype == np.uint8 else np.repeat(img[..., None], 3, axis=2)), False
    return img, bgr


def load_item(item: WorkItem, profile: Profile, decode_mode: str = "exact", keep_full_mask: bool = False,
              max_pixels: int = DEFAULT_MAX_PIXELS, volumes: VolumeCache | None = None,
              slice_order: str = "yaml") -> Loaded:
    """Read and resize one image (and its mask). Never raises for a bad file: returns ``failed``.

    Only decoding touches full-size pixels: everything else (colour order, the mask's grey conversion and value
    check) runs on the network-size result, so a 12-megapixel photograph costs its decode and one resize."""
    out = Loaded(item)
    t0 = time.thread_time()  # this thread's CPU time: what the work costs, not how long it waited for a core
    decode_s = 0.0
    try:
        cache = volumes or VolumeCache()
        if item.slice is not None and profile.slices > 1:  # the K-slice sample holding this slice, made once
            small, start, out.original_hw = cache.samples.get(
                (item.locations, item.slice // profile.slices), lambda said: k_slice_sample(item, profile, slice_order,
                                                                                           cache, said), out.notes)
            out.sample, out.channel = (int(item.volume or 0), start), item.slice - start
            img = None
        elif item.slice is not None:  # a volume's slice (loaders/volumes.py)
            img, bgr = read_slice(item.locations, item.slice, slice_order, cache, out.notes), False
            out.original_hw = (int(img.shape[0]), int(img.shape[1]))
        elif len(item.locations) == 1:
            reduce_for = profile.size if decode_mode == "reduced" else None
            img, out.original_hw, bgr = read_any(item.locations[0], out.notes, reduce_for, max_pixels, cache.readers)
        else:
            img, bgr = read_planes(item.locations, out.notes, max_pixels), False  # RGB order already
            out.original_hw = (int(img.shape[0]), int(img.shape[1]))
        if item.slice is not None and item.label_path:
            mask = read_label_slice(item.label_path, item.slice, cache)
            check_mask_size((mask.shape[1], mask.shape[0]), out.original_hw[::-1], item.label_path, None)
        else:
            mask = (read_mask(item.label_path, out.original_hw, out.notes, item.locations[0], max_pixels)
                    if item.label_path else None)
        decode_s = time.thread_time() - t0
        size = (profile.width, profile.height)
        if img is not None:
            img, bgr = to_channels(img, profile.channels, bgr, out.notes)
            small = resize(img, profile)
            del img
            out.image = cv2.cvtColor(small, cv2.COLOR_BGR2RGB) if bgr else small
        else:
            out.image = small
        if mask is not None:
            out.mask = grey_mask(cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST), out.notes)
            out.notes += mask_notes(out.mask, item.label_path or "")
            if keep_full_mask:
                out.full_mask = grey_mask(mask, [])
        labelled = item.label_path is not None or item.target is not None
        out.status = "converted" if out.notes else ("ok" if labelled else "unscored")
    except ImageFault as exc:
        out.status, out.image, out.mask = "failed", None, None
        out.notes.append(str(exc))
    except (cv2.error, ValueError, MemoryError) as exc:
        out.status, out.image, out.mask = "failed", None, None
        out.notes.append(f"cannot process image: {exc}".strip())
    out.decode_s = decode_s or time.thread_time() - t0
    out.preprocess_s = time.thread_time() - t0 - out.decode_s
    return out


def resize(img: np.ndarray, profile: Profile) -> np.ndarray:
    """The profile's intensity step that comes before the resize (``minmax``: the image's own range to 0..255
    uint8, kidney-cls), then the resize to the network's size with the profile's interpolation."""
    if profile.intensity == "minmax":
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX, dtype=cv2.CV_8U)
    return cv2.resize(img, (profile.width, profile.height), interpolation=CV_INTERP[profile.interpolation])


def k_slice_sample(item: WorkItem, profile: Profile, order: str, cache: VolumeCache, notes: list[str]
                   ) -> tuple[np.ndarray, int, tuple[int, int]]:
    """The network-size K-slice sample that scores ``item``'s slice (all K channels resized at once, as ECVL's
    AugResizeDim resizes the K-channel image), its first slice, and a slice's own (H, W)."""
    stack, start = read_sample(item.locations, int(item.slice or 0), profile.slices, order, cache, notes)
    return resize(stack, profile), start, (int(stack.shape[0]), int(stack.shape[1]))


def to_tensor(images: Sequence[np.ndarray], profile: Profile) -> np.ndarray:
    """Network-size images (H x W x C, or H x W for grey) -> float32 NCHW, then the profile's intensity scale
    and (x - mean) / std, as ECVL's augmentations."""
    batch = np.stack([im if im.ndim == 3 else im[..., None] for im in images]).astype(np.float32)
    return normalise(batch.transpose(0, 3, 1, 2), profile)


def normalise(batch: np.ndarray, profile: Profile) -> np.ndarray:
    """float32 NCHW holding the read values -> /255 (``255`` and ``minmax``; ``raw`` keeps them), then
    (x - mean) / std per channel; C-contiguous. One arithmetic for both loaders, so they give the same tensor for
    the same pixels."""
    batch = np.ascontiguousarray(batch, np.float32)
    if profile.intensity != "raw":
        batch *= np.float32(1.0 / 255.0)
    if profile.mean is not None and profile.std is not None:
        batch -= np.asarray(profile.mean, np.float32)[:, None, None]
        batch /= np.asarray(profile.std, np.float32)[:, None, None]
    return batch


@dataclass
class Batch:
    """Consecutive loaded items; ``x`` holds only those with pixels (``rows`` say which). A K-slice model's
    slices share their samples: ``x`` holds each sample once, and ``take``/``channel`` say which sample and which
    of its output maps each row is."""

    items: list[Loaded]
    x: np.ndarray | None
    rows: list[int]
    take: list[int] | None = None
    channel: list[int] | None = None

    def per_row(self, maps: np.ndarray | None) -> np.ndarray | None:
        """The model's output for each row: as it is, or (a K-slice model) each row's own slice map."""
        if maps is None or self.take is None:
            return maps
        return np.ascontiguousarray(maps[self.take, self.channel])


def batch_of(loaded: list[Loaded], profile: Profile) -> Batch:
    """The batch of ``loaded``: its tensor, each K-slice sample in it once."""
    rows = [k for k, it in enumerate(loaded) if it.image is not None]
    if not rows:
        return Batch(loaded, None, rows)
    if loaded[rows[0]].sample is None:
        return Batch(loaded, to_tensor([loaded[k].image for k in rows], profile), rows)
    first: dict[tuple[int, int] | None, int] = {}
    for k in rows:
        first.setdefault(loaded[k].sample, k)
    order = {key: j for j, key in enumerate(first)}
    return Batch(loaded, to_tensor([loaded[k].image for k in first.values()], profile), rows,
                 [order[loaded[k].sample] for k in rows], [loaded[k].channel for k in rows])


def iter_batches(
    items: Iterable[WorkItem], profile: Profile, batch_size: int, threads: int = 2, prefetch: int = 2,
    decode_mode: str = "exact", keep_full_mask: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
    slice_order: str = "yaml", readers: Readers = READERS,
) -> Iterator[Batch]:
    """Batches in order; the short last batch is yielded, never dropped.

    ``items`` is pulled lazily (the dynamic schedule hands out chunks as it goes); a thread pool
    loads up to ``prefetch`` batches ahead of the consumer.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    source = iter(items)
    window = batch_size * (prefetch + 1)
    volumes = VolumeCache(readers=readers)  # this rank's volumes: each read once, its slices served from memory
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="loader") as pool:
        pending: deque[Future[Loaded]] = deque()
        exhausted = False
        while True:
            while not exhausted and len(pending) < window:
                item = next(source, None)
                if item is None:
                    exhausted = True
                else:
                    pending.append(pool.submit(load_item, item, profile, decode_mode, keep_full_mask,
                                                   max_pixels, volumes, slice_order))
            if not pending:
                return
            yield batch_of([pending.popleft().result() for _ in range(min(batch_size, len(pending)))], profile)
