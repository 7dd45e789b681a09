"""The format-2 container: a safetensors file of uint8 parts whose last 32 bytes are a SHA-256.

Layout (a valid safetensors file, readable by any safetensors reader as 1-D ``U8`` tensors):

    u64 LE  n                       length of the JSON header
    n bytes JSON header             {"__metadata__": {"nernfast_container": "2"},
                                     "<part>": {"dtype": "U8", "shape": [len], "data_offsets": [a, b]}, ...,
                                     "sha256": {... the last 32 bytes ...}}   (space-padded to 8)
    parts, back to back             in header order
    32 bytes                        SHA-256 of every byte before them (header and parts)

The checksum covers the whole file but itself, so a flipped byte anywhere and any truncation are
detected before a single part is decoded. What the parts hold is described by the ``meta`` part
(see nernfast.codec.artefact).
"""
from __future__ import annotations

import hashlib
import json
import struct

CONTAINER_KEY = "nernfast_container"
VERSION = 2
CHECKSUM = "sha256"
DIGEST = 32


class ContainerError(ValueError):
    """A file that is not an intact format-2 container; the message is one line for the user."""


def write_container(parts: dict[str, bytes]) -> bytes:
    header: dict[str, object] = {"__metadata__": {CONTAINER_KEY: str(VERSION)}}
    off = 0
    for name, blob in parts.items():
        if name == CHECKSUM or not blob:
            raise ValueError(f"part {name!r}: the name is reserved or the part is empty")
        header[name] = {"dtype": "U8", "shape": [len(blob)], "data_offsets": [off, off + len(blob)]}
        off += len(blob)
    header[CHECKSUM] = {"dtype": "U8", "shape": [DIGEST], "data_offsets": [off, off + DIGEST]}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    body = struct.pack("<Q", len(text)) + text + b"".join(parts.values())
    return body + hashlib.sha256(body).digest()


def header_of(data: bytes) -> dict | None:
    """The safetensors JSON header, or None when there is none to parse."""
    if len(data) < 8:
        return None
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        return None
    try:
        head = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return head if isinstance(head, dict) else None


def is_container(head: dict | None) -> bool:
    md = (head or {}).get("__metadata__")
    return isinstance(md, dict) and CONTAINER_KEY in md


def intact(data: bytes) -> bool:
    return len(data) > DIGEST and hashlib.sha256(data[:-DIGEST]).digest() == data[-DIGEST:]


def read_container(data: bytes, name: str) -> dict[str, bytes]:
    """The parts of an intact container, else ContainerError naming what is wrong (``name``: the path)."""
    head = header_of(data)
    if not intact(data):
        end = _claimed_end(data, head)
        if end is not None and len(data) < end:
            raise ContainerError(f"{name} is truncated ({len(data):,} of {end:,} bytes): copy it again or re-create it")
        raise ContainerError(f"{name} is corrupt (its SHA-256 checksum does not match its contents): "
                             "copy it again or re-create it")
    md = head.get("__metadata__", {}) if head else {}
    version = md.get(CONTAINER_KEY) if isinstance(md, dict) else None
    if version != str(VERSION):
        raise ContainerError(f"{name}: artefact container version {version!r}; this nernfast reads version "
                             f"{VERSION} (and format-1 artefacts): upgrade nernfast")
    start = 8 + struct.unpack("<Q", data[:8])[0]
    parts = {}
    for key, entry in head.items():
        if key in ("__metadata__", CHECKSUM):
            continue
        a, b = entry["data_offsets"]
        parts[key] = data[start + a:start + b]
    return parts


def _claimed_end(data: bytes, head: dict | None) -> int | None:
    """The file size the header describes (None without a readable container header)."""
    if not is_container(head):
        return None
    try:
        ends = [int(v["data_offsets"][1]) for k, v in head.items() if k != "__metadata__"]
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return 8 + struct.unpack("<Q", data[:8])[0] + max(ends, default=0)


def part_sizes(data: bytes) -> dict[str, int]:
    """Bytes of every part, plus ``header`` (length prefix + JSON) and ``sha256``; they sum to len(data)."""
    head = header_of(data)
    if head is None:
        raise ContainerError("not a format-2 artefact container")
    sizes = {"header": 8 + struct.unpack("<Q", data[:8])[0]}
    for key, entry in head.items():
        if key != "__metadata__":
            a, b = entry["data_offsets"]
            sizes[key] = b - a
    return sizes
