"""The bytes of one point-to-point message: a fixed header, then a ``{name: tensor}`` dict packed in one buffer.

A hop carries a dict of a few tensors (an activation and its metadata, or a gradient). Sending each tensor behind
its own shape header costs two messages per tensor, and on gloo every message whose receive is not posted yet is
a round trip. So a dict travels as ONE flat ``uint8`` buffer: each tensor's bytes at a 16-byte aligned offset
given by its ``Layout`` (keys, dtypes, shapes), which the receiver unpacks into views without copying.

No ``torch.distributed`` here: this module only builds and reads buffers, so it is tested in one process.

Header (``HEADER_BYTES``, eight int64): ``[MAGIC, kind, microbatch, sequence, layout fingerprint, description
bytes, payload bytes, 0]``. The receiver checks the magic, the sequence number of the message on its channel, the
microbatch it expects and the fingerprint of the layout it expects: a sender and receiver that disagree get an
error naming both sides, never bytes reinterpreted under another shape or dtype (gloo checks neither).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "HEADER_BYTES",
    "Header",
    "Kind",
    "Layout",
    "TensorSpec",
    "WireError",
    "aligned",
    "decode_description",
    "description_nbytes",
    "layout_of",
    "pack",
    "read_header",
    "unpack",
    "write_header",
]

MAGIC = 0x6D696D6F_5032_01  # "mimoP2", protocol 1
HEADER_BYTES = 64
ALIGN = 16
"""Offsets of packed tensors: a multiple of every element size, so ``view(dtype)`` needs no copy."""

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
    "int64": torch.int64, "int32": torch.int32, "bool": torch.bool, "uint8": torch.uint8,
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_ITEMSIZE = {dtype: torch.empty((), dtype=dtype).element_size() for dtype in _DTYPES.values()}


class WireError(RuntimeError):
    """A message that does not match what its receiver expects (a protocol or a sender bug, never data)."""


class Kind(IntEnum):
    INLINE = 1
    """The payload follows the header in the same message, in the layout both sides agreed."""
    TAIL = 2
    """A second message follows: the layout's description, then the payload."""


class TensorSpec(NamedTuple):
    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]


def aligned(nbytes: int) -> int:
    """``nbytes`` rounded up to the packing alignment."""
    return -(-nbytes // ALIGN) * ALIGN


@dataclass(frozen=True)
class Layout:
    """Where each tensor of a dict lies in a packed buffer. Two layouts are equal when their specs are."""

    specs: tuple[TensorSpec, ...]
    offsets: tuple[int, ...] = field(init=False, compare=False)
    nbytes: int = field(init=False, compare=False)
    description: bytes = field(init=False, compare=False, repr=False)
    fingerprint: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        offsets, offset = [], 0
        for spec in self.specs:
            if spec.dtype not in _NAMES:
                raise ValueError(f"cannot send {spec.key!r} of dtype {spec.dtype}; supported: {sorted(_DTYPES)}")
            offsets.append(offset)
            offset += aligned(_numel(spec.shape) * _ITEMSIZE[spec.dtype])
        description = json.dumps([[s.key, _NAMES[s.dtype], list(s.shape)] for s in self.specs]).encode()
        object.__setattr__(self, "offsets", tuple(offsets))
        object.__setattr__(self, "nbytes", offset)
        object.__setattr__(self, "description", description)
        # crc32, not hash(): it must be the same number in every process.
        object.__setattr__(self, "fingerprint", zlib.crc32(description))

    def __str__(self) -> str:
        return ", ".join(f"{s.key}: {_NAMES[s.dtype]}{list(s.shape)}" for s in self.specs) or "(empty)"


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def layout_of(tensors: Mapping[str, Tensor]) -> tuple[TensorSpec, ...]:
    """The specs of a dict, in its key order (compare with ``Layout.specs`` before building a ``Layout``)."""
    return tuple(TensorSpec(key, tensor.dtype, tuple(tensor.shape)) for key, tensor in tensors.items())


class Header(NamedTuple):
    kind: Kind
    microbatch: int
    sequence: int
    fingerprint: int
    description_bytes: int
    payload_bytes: int


def write_header(buffer: Tensor, header: Header) -> None:
    values = [MAGIC, int(header.kind), header.microbatch, header.sequence, header.fingerprint,
              header.description_bytes, header.payload_bytes, 0]
    buffer[:HEADER_BYTES].view(torch.int64).copy_(torch.tensor(values, dtype=torch.int64))


def read_header(buffer: Tensor) -> Header:
    values = buffer[:HEADER_BYTES].view(torch.int64).tolist()
    if values[0] != MAGIC or values[1] not in (Kind.INLINE, Kind.TAIL):
        raise WireError(f"not a mimo point-to-point header: {values}")
    return Header(Kind(values[1]), *values[2:7])


def pack(tensors: Mapping[str, Tensor], layout: Layout, buffer: Tensor, offset: int = 0) -> None:
    """Copy ``tensors`` (in ``layout``'s key order) into ``buffer[offset:]``."""
    for spec, start, tensor in zip(layout.specs, layout.offsets, tensors.values()):
        nbytes = tensor.numel() * tensor.element_size()
        if nbytes:
            target = buffer[offset + start : offset + start + nbytes].view(spec.dtype).view(spec.shape)
            target.copy_(tensor.detach())


def unpack(buffer: Tensor, layout: Layout, offset: int = 0) -> dict[str, Tensor]:
    """Views of ``buffer[offset:]`` as the dict ``layout`` describes (no copy: they keep the buffer alive)."""
    out = {}
    for spec, start in zip(layout.specs, layout.offsets):
        nbytes = _numel(spec.shape) * _ITEMSIZE[spec.dtype]
        out[spec.key] = buffer[offset + start : offset + start + nbytes].view(spec.dtype).view(spec.shape)
    return out


def description_nbytes(layout: Layout) -> int:
    """Bytes the description takes in a TAIL message (padded so the payload that follows is aligned)."""
    return aligned(len(layout.description))


def decode_description(data: bytes, fingerprint: int) -> Layout:
    """The layout a TAIL message announces; its fingerprint must match the header's."""
    try:
        specs = tuple(
            TensorSpec(str(key), _DTYPES[dtype], tuple(int(d) for d in shape)) for key, dtype, shape in json.loads(data)
        )
    except (ValueError, KeyError, TypeError) as error:
        raise WireError(f"unreadable layout description {data[:200]!r}: {error}") from error
    layout = Layout(specs)
    if layout.fingerprint != fingerprint:
        raise WireError(f"layout description {layout} does not match its header's fingerprint")
    return layout
