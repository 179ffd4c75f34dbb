"""Packing a dict into one buffer and reading it back, headers, and layout descriptions (one process)."""

from __future__ import annotations

import pytest
import torch

from mimo.comm.wire import (
    ALIGN,
    HEADER_BYTES,
    Header,
    Kind,
    Layout,
    WireError,
    decode_description,
    layout_of,
    pack,
    read_header,
    unpack,
    write_header,
)


def _tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return {
        "language": torch.randn(2, 3, 5, generator=generator),
        "language/position_ids": torch.arange(6).reshape(2, 3),
        "flag": torch.tensor([True, False, True]),
        "half": torch.randn(3, generator=generator).to(torch.bfloat16),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "transposed": torch.arange(6, dtype=torch.int32).reshape(2, 3).t(),
    }


def test_pack_then_unpack_gives_equal_tensors_as_views_of_one_buffer():
    tensors = _tensors()
    layout = Layout(layout_of(tensors))
    buffer = torch.zeros(HEADER_BYTES + layout.nbytes, dtype=torch.uint8)
    pack(tensors, layout, buffer, HEADER_BYTES)
    out = unpack(buffer, layout, HEADER_BYTES)
    assert list(out) == list(tensors)
    for key, tensor in tensors.items():
        assert out[key].dtype == tensor.dtype and out[key].shape == tensor.shape, key
        assert torch.equal(out[key], tensor), key
        if out[key].numel():
            assert out[key].untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr(), key
    assert all(offset % ALIGN == 0 for offset in layout.offsets)


def test_a_received_view_can_require_grad_and_get_a_gradient():
    layout = Layout(layout_of({"x": torch.ones(2, 2)}))
    buffer = torch.zeros(layout.nbytes, dtype=torch.uint8)
    pack({"x": torch.ones(2, 2)}, layout, buffer)
    x = unpack(buffer, layout)["x"].requires_grad_(True)
    (3 * x).sum().backward()
    assert torch.equal(x.grad, torch.full((2, 2), 3.0))


def test_layouts_compare_by_keys_dtypes_and_shapes_and_fingerprints_are_stable():
    a = Layout(layout_of({"x": torch.ones(2, 3)}))
    assert a == Layout(layout_of({"x": torch.zeros(2, 3)}))
    assert a != Layout(layout_of({"x": torch.ones(3, 2)}))
    assert a != Layout(layout_of({"x": torch.ones(2, 3, dtype=torch.float64)}))
    assert a != Layout(layout_of({"y": torch.ones(2, 3)}))
    assert a.fingerprint == Layout(layout_of({"x": torch.zeros(2, 3)})).fingerprint  # crc32: same in every process
    assert decode_description(a.description, a.fingerprint) == a


def test_a_description_with_the_wrong_fingerprint_or_garbage_is_an_error():
    a = Layout(layout_of({"x": torch.ones(2, 3)}))
    with pytest.raises(WireError, match="fingerprint"):
        decode_description(a.description, a.fingerprint + 1)
    with pytest.raises(WireError, match="unreadable"):
        decode_description(b"not json", 0)


def test_headers_round_trip_and_foreign_bytes_are_refused():
    buffer = torch.zeros(HEADER_BYTES, dtype=torch.uint8)
    header = Header(Kind.TAIL, microbatch=7, sequence=3, fingerprint=12345, description_bytes=40, payload_bytes=96)
    write_header(buffer, header)
    assert read_header(buffer) == header
    with pytest.raises(WireError, match="not a mimo"):
        read_header(torch.zeros(HEADER_BYTES, dtype=torch.uint8))


def test_unsupported_dtypes_are_refused_with_the_key():
    with pytest.raises(ValueError, match="'z'.*complex64"):
        Layout(layout_of({"z": torch.ones(2, dtype=torch.complex64)}))
