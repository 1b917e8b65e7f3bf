"""Command-line value types: every option is checked when argv is parsed, before any work, so a bad value is
a usage error (exit 2) naming the option, never something found later on every rank.

Kubernetes names and quantities follow the API server's own rules (DNS-1123/1035 names, resource quantities),
so ``mpi_infer manifest`` never renders YAML that ``kubectl apply`` would reject.
"""

from __future__ import annotations

import argparse
import contextvars
import os
import re
import sys
import time
from collections.abc import Callable

from .errors import UsageError, clip

MAX_PARTS = 100_000  # split -n: files written; more is a typo, not a plan
MAX_RANKS_HINT = 1_000_000


def int_range(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {clip(text)!r}") from None
        if value < lo or (hi is not None and value > hi):
            want = f">= {lo}" if hi is None else f"from {lo} to {hi}"
            raise argparse.ArgumentTypeError(f"expected an integer {want}, got {clip(text)}")
        return value

    parse.__name__ = "integer"
    return parse


def float_range(lo: float, hi: float, lo_open: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {clip(text)!r}") from None
        if not (value > lo if lo_open else value >= lo) or not value <= hi or value != value:
            left = "(" if lo_open else "["
            raise argparse.ArgumentTypeError(f"expected a number in {left}{lo}, {hi}], got {clip(text)}")
        return value

    parse.__name__ = "number"
    return parse


def nonempty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a non-empty value")
    return text


def split_names(text: str) -> str:
    """--split: one or more comma-separated names; an empty name would silently select nothing or all."""
    names = text.split(",")
    if not text.strip() or any(not n.strip() for n in names):
        raise argparse.ArgumentTypeError(f"expected split names (e.g. test, or training,validation), got {text!r}")
    return text


def group_pattern(text: str) -> str:
    """--group-by: a regular expression with exactly one capture group (the group's name in each location)."""
    try:
        compiled = re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"not a regular expression ({exc}): {clip(text, 80)!r}") from None
    if compiled.groups != 1:
        raise argparse.ArgumentTypeError(f"expected exactly one capture group, e.g. '(PAT_[0-9]+)_', "
                                         f"got {compiled.groups} in {clip(text, 80)!r}")
    return text


def patient_pattern(text: str) -> str:
    """--patient-by: ``dicom:KEYWORD`` (a DICOM data element, e.g. PatientID), or a regular expression over the
    whole path (its first capture group, else the whole match, names the patient)."""
    if text.startswith("dicom:"):
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{0,63}", text[6:]):
            raise argparse.ArgumentTypeError(f"expected dicom:KEYWORD (e.g. dicom:PatientID), got {clip(text, 80)!r}")
        return text
    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"not a regular expression ({exc}): {clip(text, 80)!r}") from None
    return text


_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _k8s_name(pattern: re.Pattern[str], limit: int, what: str, rule: str) -> Callable[[str], str]:
    """A checker for one of the API server's name rules (the pattern, a length limit, and the rule in words)."""
    def parse(text: str) -> str:
        if not pattern.match(text) or len(text) > limit:
            raise argparse.ArgumentTypeError(f"{clip(text)!r} is not a valid {what}: {rule}, at most {limit} "
                                             f"characters")
        return text

    parse.__name__ = what
    return parse


# The MPIJob's name: the operator names a Service after it (a DNS-1035 label) and pods <name>-launcher and
# <name>-worker-<i> (hostnames of at most 63 characters).
k8s_job_name = _k8s_name(_DNS1035_LABEL, 50, "MPIJob name", "lower-case letters, digits and '-', starting with a "
                         "letter and ending with a letter or digit (pods are named <name>-worker-<i>, at most 63)")
k8s_label = _k8s_name(_DNS1123_LABEL, 63, "Kubernetes name (DNS-1123 label)",
                      "lower-case letters, digits and '-', starting and ending with a letter or digit")
k8s_subdomain = _k8s_name(_DNS1123_SUBDOMAIN, 253, "Kubernetes name (DNS-1123 subdomain)",
                          "lower-case letters, digits, '-' and '.'")


_CPU = re.compile(r"^(\d+(\.\d+)?|\.\d+|\d+m)$")
_BYTES = re.compile(r"^(\d+(\.\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")


def k8s_cpu(text: str) -> str:
    """A CPU quantity (cores, e.g. 2 or 1.5, or millicores, e.g. 500m), greater than zero."""
    if not _CPU.match(text) or float(text.rstrip("m") or 0) <= 0:
        raise argparse.ArgumentTypeError(f"expected a CPU quantity > 0 such as 2, 1.5 or 500m, got {clip(text)!r}")
    return text


def k8s_bytes(text: str) -> str:
    """A memory or storage quantity (e.g. 4Gi, 512Mi, 100G), greater than zero."""
    m = _BYTES.match(text)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a quantity > 0 such as 4Gi, 512Mi or 100G, got {clip(text)!r}")
    return text


def image_ref(text: str) -> str:
    if not text or any(c.isspace() for c in text) or len(text) > 4096:
        raise argparse.ArgumentTypeError(f"expected a container image reference, got {clip(text)!r}")
    return text


def mpi_rank_from_env() -> int:
    """This process's rank in an MPI world, from the launcher's environment (0 outside mpirun), read before
    MPI starts: under ``mpirun -n N`` every rank parses the same argv, and only rank 0 should say it is bad."""
    for var in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"):
        value = os.environ.get(var)
        if value and value.isdigit():
            return int(value)
    return 0


# Set by the Python API: a bad option raises UsageError in the caller's process instead of exiting it.
RAISE_USAGE_ERRORS: contextvars.ContextVar[bool] = contextvars.ContextVar("raise_usage_errors", default=False)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose errors are printed by rank 0 alone (every rank still exits 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if RAISE_USAGE_ERRORS.get():
            raise UsageError(message)
        if mpi_rank_from_env() == 0:
            self.print_usage(sys.stderr)
            sys.stderr.write(f"{self.prog}: error: {clip(message, 600)}\n")
            sys.stderr.flush()
        else:  # let rank 0 say it first: mpirun ends the whole job as soon as any rank exits non-zero
            time.sleep(5)
        sys.exit(2)
