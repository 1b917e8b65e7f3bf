"""What a file is, from its header alone (the dry run's check of every selected file): DICOM, NIfTI, or a format
OpenCV reads; missing, unreadable and unsupported files are named before any rank starts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .imagefiles import ImageFault, check_image_file, read_header
from .medical import read_header as medical_header
from .medical import sniff


def probe(path: str, what: str) -> str:
    """The file's format ('DICOM', 'NIfTI', 'PNG', 'JPEG', or OpenCV's name for it), read from its header;
    ImageFault saying what is wrong otherwise."""
    check_image_file(path, what)
    kind = sniff(path)
    if kind in ("dicom", "nifti"):
        return medical_header(path, kind).format.replace("dicom", "DICOM").replace("nifti", "NIfTI")
    head = read_header(path, what)  # PNG and JPEG from their headers; another format decoded once by OpenCV
    return head.format.upper() if head.format != "other" else "image"


@dataclass
class FileCheck:
    """The dry run's count: every file, by outcome, with the first few problems named."""

    checked: int = 0
    readable: int = 0
    formats: dict[str, int] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)  # missing | unreadable | unsupported -> examples
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, path: str, what: str) -> None:
        self.checked += 1
        try:
            fmt = probe(path, what)
        except ImageFault as exc:
            text = str(exc)
            unsupported = ("no format", "holds no image", "remote location", "not an image OpenCV reads")
            kind = ("missing" if "not found" in text else
                    "unsupported" if any(u in text for u in unsupported) else "unreadable")
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if len(self.problems.setdefault(kind, [])) < 3:
                self.problems[kind].append(text)
            return
        self.readable += 1
        self.formats[fmt] = self.formats.get(fmt, 0) + 1

    def line(self) -> str:
        formats = ", ".join(f"{n} {f}" for f, n in sorted(self.formats.items()))
        text = f"dry run: {self.checked} file(s) checked from their headers: {self.readable} readable ({formats})"
        for kind, n in sorted(self.counts.items()):
            text += f"; {n} {kind} (first: {self.problems[kind][0]})"
        return text


def check_files(paths: Iterable[tuple[str, str]]) -> FileCheck:
    """Probe every (path, what) pair."""
    check = FileCheck()
    for path, what in paths:
        check.add(path, what)
    return check
