"""YAML text as rank 0 reads it, before any dataset rule: a size cap sized to memory, a nesting guard (a parser
recurses per level), and the YAML 1.2 parse itself (yaml-rs: no objects built, `no`/`on` stay strings)."""

from __future__ import annotations

import os
from typing import Any

import yaml_rs

from ..errors import DatasetError, clip


def _strip_directive(text: str) -> str:
    """ECVL's example opens with OpenCV's ``%YAML:1.2``; yaml-cpp accepts it, so we drop any directive."""
    if text.startswith("%"):
        first_newline = text.find("\n")
        return "\n" + text[first_newline + 1 :] if first_newline >= 0 else ""
    return text


MAX_NESTING = 64  # an ECVL dataset needs about 6 levels (images, an entry, its location list, ...)


def yaml_nesting(text: str) -> int:
    """The deepest nesting the text can make (block indentation, ``- `` items on one line, flow brackets), found
    without parsing: a parser recurses per level, and a few kB of ``- - - x`` overflowed rank 0's stack."""
    deepest, indents, flow, quote = 0, [], 0, ""
    for line in text.splitlines():
        body = line.lstrip(" ")
        indent = len(line) - len(body)
        if body and not body.startswith("#") and not flow:
            while indents and indents[-1] >= indent:
                indents.pop()
            indents.append(indent)
        dashes = 0
        while body.startswith(("- ", "? ")) or body in ("-", "?"):
            dashes, body = dashes + 1, body[2:].lstrip(" ")
        line_flow = flow
        for c in body:
            if quote:
                quote = "" if c == quote else quote
            elif c in "'\"":
                quote = c
            elif c == "#":
                break
            elif c in "[{":
                flow += 1
                line_flow = max(line_flow, flow)
            elif c in "]}":
                flow = max(0, flow - 1)
        quote = ""  # a quoted scalar rarely spans lines; a wrong guess only makes the estimate smaller
        deepest = max(deepest, len(indents) + dashes + line_flow)
    return deepest


def parse_yaml_text(text: str, where: str) -> Any:
    """Parse YAML 1.2 (yaml-rs): ``no``/``on`` stay strings as in yaml-cpp; no objects are built. Nesting deeper
    than any dataset needs is refused first (exit 10), naming the file."""
    depth = yaml_nesting(text)
    if depth > MAX_NESTING:
        raise DatasetError(f"{where}: nested {depth} levels deep; an ECVL dataset needs a few (at most "
                           f"{MAX_NESTING} are read): refused before parsing")
    try:
        return yaml_rs.loads(_strip_directive(text), parse_datetime=False)
    except Exception as exc:  # yaml_rs.YAMLDecodeError and friends
        raise DatasetError(f"{where}: not valid YAML: {clip(str(exc), 400)}") from exc


YAML_BYTES_OF_MEMORY = 16  # a parsed YAML holds about 15 bytes of Python objects per byte of text (measured)


def yaml_byte_cap() -> int:
    """The largest dataset YAML rank 0 will parse: its memory (the cgroup's limit in a pod, else the machine's)
    over the parse's cost per byte, at most 4 GiB. A million-image YAML is about 100 MB."""
    from ..atomic import MAX_INPUT_BYTES

    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as fh:
                text = fh.read().strip()
            if text.isdigit():
                memory = min(memory, int(text))
        except OSError:
            continue
    return max(1 << 20, min(MAX_INPUT_BYTES, memory // YAML_BYTES_OF_MEMORY))
