"""Image files before decoding: the checks that keep a bad path from hanging or killing a loader, and what a
file's header says (size, depth, channels, EXIF orientation), read without decoding pixels.

Both loaders use these: the OpenCV loader to note ECVL's conversions and to pick a reduced JPEG decode, the ECVL
loader to pre-check every file before ECVL's threads (which cannot survive a bad file) see it.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass

import cv2
import numpy as np

from ..atomic import read_input

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ImageFault(Exception):
    """This image (or its mask) cannot be scored; the message says why."""


MAX_IMAGE_BYTES = 1 << 30  # one image or mask file; larger ones are refused, not read


def check_image_file(path: str, what: str) -> None:
    """Refuse, as an ImageFault, a remote location or anything that is not a regular file within the bound."""
    if path.lower().startswith(("http://", "https://")):
        raise ImageFault(f"{what} is a remote location, which mpi_infer does not download: {path}")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageFault(f"{what} file not found: {path}") from None
    except OSError as exc:
        raise ImageFault(f"{what} file cannot be opened ({exc.strerror or exc}): {path}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageFault(f"{what} path is a folder: {path}")
    if not stat.S_ISREG(st.st_mode):
        raise ImageFault(f"{what} is not a regular file (a FIFO, device or socket): {path}")
    if st.st_size > MAX_IMAGE_BYTES:
        raise ImageFault(f"{what} file is {st.st_size} bytes, more than the {MAX_IMAGE_BYTES} allowed: {path}")


def png_depth_and_colour(head: bytes) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG header, or None for other formats."""
    if len(head) >= 26 and head[:8] == PNG_MAGIC:
        return head[24], head[25]
    return None


TRANSPOSING_ORIENTATIONS = {5: "transposed", 6: "rotated 90° clockwise", 7: "transversed",
                            8: "rotated 90° counter-clockwise"}


def exif_orientation(path: str) -> int | None:
    """The EXIF Orientation tag (1-8) of an image file, or None. OpenCV's imread, and so ECVL's reader, applies
    it: the decoded pixels are in the displayed orientation, not the stored one."""
    try:
        from PIL import Image  # reads the header only

        with Image.open(path) as im:
            value = im.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - no EXIF, or a format PIL does not know: nothing is rotated
        return None
    return int(value) if isinstance(value, int) else None


@dataclass
class Header:
    """What a file's header says, read without decoding pixels."""

    width: int
    height: int
    depth: int  # bits per sample
    channels: int  # as OpenCV's IMREAD_ANYCOLOR will give them (alpha dropped, palette expanded)
    alpha: bool = False
    format: str = "other"  # png | jpeg | other


def png_header(data: bytes, tail: bytes, what: str, path: str) -> Header:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageFault(f"{what} cannot be decoded (PNG without an IHDR header): {path}")
    if tail[4:8] != b"IEND":
        raise ImageFault(f"{what} cannot be decoded (truncated PNG: no IEND chunk): {path}")
    width, height = struct.unpack(">II", data[16:24])
    depth, colour = data[24], data[25]
    channels = 1 if colour in (0, 4) else 3  # grey (+alpha) or RGB / palette (+alpha)
    return Header(width, height, depth, channels, alpha=colour in (4, 6), format="png")


def jpeg_header(data: bytes, what: str, path: str) -> Header:
    """Walk the JPEG markers to the frame header (SOFn) and on to the first scan (SOS)."""
    pos, frame = 2, None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker == 0xDA:  # start of scan: pixels follow; a truncated tail still decodes (grey rows)
            if frame is None:
                break
            return frame
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and pos + 10 <= len(data):
            depth, height, width, comps = data[pos + 4], *struct.unpack(">HH", data[pos + 5 : pos + 9]), data[pos + 9]
            frame = Header(width, height, depth, 1 if comps == 1 else 3, format="jpeg")
        pos += 2 + length
    raise ImageFault(f"{what} cannot be decoded (JPEG without a frame and a scan: truncated or corrupt): {path}")


_STANDALONE = {0x01, *range(0xD0, 0xDA)}
EOI_TAIL = 64 * 1024  # where a JPEG's end-of-image marker must be (a camera's trailer may follow it)


def truncation_notes(path: str, what: str) -> list[str]:
    """A JPEG with no end-of-image marker was cut short: libjpeg (so OpenCV's and ECVL's reads alike) decodes
    its missing rows grey, with a warning on stderr only. Its record says so (status ``converted``), as both
    loaders' other conversions do; the scores stay ECVL's."""
    with open(path, "rb") as fh:
        if fh.read(2) != b"\xff\xd8":
            return []
        size = os.fstat(fh.fileno()).st_size
        fh.seek(max(2, size - EOI_TAIL))
        tail = fh.read(EOI_TAIL)
    if b"\xff\xd9" in tail:
        return []
    return [f"{what} is a JPEG cut short (no end-of-image marker); its missing rows decode grey, as ECVL decodes "
            f"them"]


DEFAULT_MAX_MEGAPIXELS = 64.0  # twice the largest ISIC photograph (6688x4439, 29.7 MP)
DEFAULT_MAX_PIXELS = int(DEFAULT_MAX_MEGAPIXELS * 1e6)


def check_pixels(path: str, what: str, max_pixels: int) -> None:
    """Refuse (ImageFault: the record fails, the run goes on) a PNG or JPEG whose header declares more than
    ``max_pixels``, before a byte of pixels is decoded: a 631-byte JPEG can declare 30000x30000 (5.4 GB)."""
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic != PNG_MAGIC and magic[:2] != b"\xff\xd8":
        return  # other formats: OpenCV's own limit (OPENCV_IO_MAX_IMAGE_PIXELS) applies
    head = read_header(path, what)
    if head.width * head.height > max_pixels:
        raise ImageFault(f"{what} is {head.width}x{head.height} ({head.width * head.height / 1e6:.0f} megapixels), "
                         f"over --max-megapixels {max_pixels / 1e6:g}: refused before decoding "
                         f"({head.width * head.height * 3 / 1e9:.1f} GB as pixels): {path}")


HEAD_BYTES = 64 * 1024  # JPEG markers before the first scan (EXIF included) nearly always fit; else read on


def read_header(path: str, what: str) -> Header | None:
    """The header of a PNG or JPEG (raising ImageFault for one OpenCV could not decode), reading only the
    first bytes (and a PNG's last 12); any other format is decoded once here instead, so that nothing
    undecodable reaches ECVL's threads."""
    check_image_file(path, what)
    with open(path, "rb") as fh:
        data = fh.read(HEAD_BYTES)
        if data[:8] == PNG_MAGIC:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(max(0, size - 12))
            return png_header(data[:33], fh.read(12), what, path)
        if data[:2] == b"\xff\xd8":
            try:
                return jpeg_header(data, what, path)
            except ImageFault:
                if len(data) < HEAD_BYTES:
                    raise
            return jpeg_header(data + fh.read(MAX_IMAGE_BYTES), what, path)  # a header past 64 KiB
    data = read_input(path, ImageFault, what, max_bytes=MAX_IMAGE_BYTES)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYCOLOR)
    if img is None:
        raise ImageFault(f"{what} cannot be decoded (not an image OpenCV reads): {path}")
    return Header(img.shape[1], img.shape[0], 8, 1 if img.ndim == 2 else 3)


