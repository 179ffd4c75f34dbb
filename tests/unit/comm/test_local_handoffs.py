"""Hand-offs between two modules of one rank: in order, copied, and a clear error when the order is wrong."""

from __future__ import annotations

import pytest
import torch

from mimo.comm.local_handoffs import LocalHandoffs


def test_hand_offs_come_out_in_order_as_copies_that_start_a_new_graph():
    mailbox = LocalHandoffs()
    rows = torch.ones(3, 2, requires_grad=True) * 2
    mailbox.put("activations", "images", "language", 0, {"images": rows})
    mailbox.put("activations", "images", "language", 1, {"images": rows + 1})
    first = mailbox.take("activations", "images", "language", 0)["images"]
    assert torch.equal(first, rows) and first.grad_fn is None and not first.requires_grad
    assert first.data_ptr() != rows.data_ptr()
    assert mailbox.held_bytes == 3 * 2 * 4
    assert torch.equal(mailbox.take("activations", "images", "language", 1)["images"], rows + 1)
    assert mailbox.held_bytes == 0


def test_directions_and_module_pairs_are_separate_queues():
    mailbox = LocalHandoffs()
    mailbox.put("gradients", "language", "images", 0, {"images": torch.zeros(1)})
    with pytest.raises(RuntimeError, match=r"module 'images': activations of microbatch 0 from module 'language' on "
                                           r"the same rank was not handed over yet"):
        mailbox.take("activations", "language", "images", 0)


def test_a_hand_off_of_another_microbatch_is_an_error():
    mailbox = LocalHandoffs()
    mailbox.put("activations", "images", "language", 1, {"images": torch.zeros(1)})
    with pytest.raises(RuntimeError, match=r"is microbatch 1, where 0 was expected"):
        mailbox.take("activations", "images", "language", 0)
