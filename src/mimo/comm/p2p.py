"""Point-to-point transfer of tensors and ``{name: tensor}`` dicts with a shape and dtype handshake.

gloo checks neither size nor dtype on point-to-point: a smaller send silently fills part of the receive buffer
and a dtype mismatch reinterprets bytes. So every tensor travels behind a fixed-size int64 header
``[dtype code, ndim, dim0, ..., dim7]``, and a dict behind its key list, so the receiver allocates exactly what
was sent, for any number of dimensions, with no reshaping guesswork.

Sends are posted without waiting (``isend``); the returned ``Work`` handles (and the tensors, which must stay
alive until sent) are kept by a ``SendQueue`` that the caller drains. Receives block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

MAX_NDIM = 8
_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.bool,
           torch.uint8]
_CODE = {dtype: code for code, dtype in enumerate(_DTYPES)}
_HEADER_LEN = 2 + MAX_NDIM
_KEY_BYTES = 64


@dataclass
class SendQueue:
    """Posted sends that have not been waited on yet, with the buffers they read from."""

    _pending: list[tuple[dist.Work, torch.Tensor, int]] = field(default_factory=list)

    def post(self, tensor: torch.Tensor, dst: int, group: dist.ProcessGroup | None = None) -> None:
        tensor = tensor.detach().contiguous()
        self._pending.append((dist.isend(tensor, dst=dst, group=group), tensor, dst))

    def wait_all(self) -> None:
        for work, _, _ in self._pending:
            work.wait()
        self._pending.clear()

    def peers(self) -> list[int]:
        """Destination ranks of the sends not yet waited on."""
        return sorted({dst for _, _, dst in self._pending})

    def __len__(self) -> int:
        return len(self._pending)


def _header(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dtype not in _CODE:
        raise ValueError(f"cannot send dtype {tensor.dtype}; supported: {_DTYPES}")
    if tensor.dim() > MAX_NDIM:
        raise ValueError(f"cannot send a {tensor.dim()}-d tensor; at most {MAX_NDIM} dimensions")
    header = torch.zeros(_HEADER_LEN, dtype=torch.int64)
    header[0], header[1] = _CODE[tensor.dtype], tensor.dim()
    header[2 : 2 + tensor.dim()] = torch.tensor(tensor.shape, dtype=torch.int64)
    return header


def send_tensor(queue: SendQueue, tensor: torch.Tensor, dst: int, group: dist.ProcessGroup | None = None) -> None:
    """Post the header of ``tensor`` then its data to rank ``dst``."""
    header = _header(tensor)
    queue.post(header.to(tensor.device), dst, group)
    if tensor.numel() > 0:
        queue.post(tensor, dst, group)


def recv_tensor(src: int, *, device: torch.device, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Receive one tensor sent by ``send_tensor`` from rank ``src``."""
    header = torch.empty(_HEADER_LEN, dtype=torch.int64, device=device)
    dist.recv(header, src=src, group=group)
    header = header.cpu()
    code, ndim = int(header[0]), int(header[1])
    if not 0 <= code < len(_DTYPES) or not 0 <= ndim <= MAX_NDIM:
        raise RuntimeError(f"corrupt tensor header from rank {src}: {header.tolist()}")
    shape = [int(d) for d in header[2 : 2 + ndim]]
    tensor = torch.empty(shape, dtype=_DTYPES[code], device=device)
    if tensor.numel() > 0:
        dist.recv(tensor, src=src, group=group)
    return tensor


def _encode_keys(keys: list[str]) -> torch.Tensor:
    encoded = torch.zeros(len(keys), _KEY_BYTES, dtype=torch.uint8)
    for row, key in enumerate(keys):
        data = key.encode()
        if len(data) > _KEY_BYTES:
            raise ValueError(f"dict key {key!r} is longer than {_KEY_BYTES} bytes")
        encoded[row, : len(data)] = torch.tensor(list(data), dtype=torch.uint8)
    return encoded


def _decode_keys(encoded: torch.Tensor) -> list[str]:
    return [bytes(row[row > 0].tolist()).decode() for row in encoded.cpu()]


def send_dict(
    queue: SendQueue, tensors: dict[str, torch.Tensor], dst: int, group: dist.ProcessGroup | None = None
) -> None:
    """Post a ``{name: tensor}`` dict (keys in order, then each tensor) to rank ``dst``."""
    keys = list(tensors)
    send_tensor(queue, _encode_keys(keys).to(_device_of(tensors)), dst, group)
    for key in keys:
        send_tensor(queue, tensors[key], dst, group)


def recv_dict(src: int, *, device: torch.device, group: dist.ProcessGroup | None = None) -> dict[str, torch.Tensor]:
    """Receive a dict sent by ``send_dict`` from rank ``src``."""
    keys = _decode_keys(recv_tensor(src, device=device, group=group))
    return {key: recv_tensor(src, device=device, group=group) for key in keys}


def _device_of(tensors: dict[str, torch.Tensor]) -> torch.device:
    return next(iter(tensors.values())).device if tensors else torch.device("cpu")
