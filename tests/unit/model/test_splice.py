"""splice_embeddings against an independent loop-based placement."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mimo.model import check_tokens_per_sample, splice_embeddings

PLACEHOLDERS = {"images": 5, "audio": 6}
HIDDEN = 4


def _loop_splice(text: Tensor, input_ids: Tensor, rows: dict[str, Tensor]) -> Tensor:
    """Walk [B, S] sample by sample, left to right, taking each modality's next row."""
    out = text.clone()
    next_row = dict.fromkeys(rows, 0)
    for b in range(input_ids.shape[0]):
        for s in range(input_ids.shape[1]):
            for name, token in PLACEHOLDERS.items():
                if int(input_ids[b, s]) == token:
                    out[b, s] = rows[name][next_row[name]]
                    next_row[name] += 1
    assert all(next_row[name] == rows[name].shape[0] for name in rows)
    return out


def _batch() -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    # Sample 0: no image, one audio run; sample 1: two image runs; sample 2: image then audio interleaved.
    input_ids = torch.tensor(
        [
            [1, 2, 6, 6, 6, 3, 4, 7],
            [5, 5, 1, 5, 5, 5, 2, 3],
            [1, 5, 6, 5, 6, 2, 3, 4],
        ]
    )
    text = torch.randn(3, 8, HIDDEN)
    rows = {"images": torch.randn(7, HIDDEN), "audio": torch.randn(5, HIDDEN)}
    return input_ids, text, rows


def test_several_modalities_land_row_major() -> None:
    input_ids, text, rows = _batch()
    out = splice_embeddings(text, input_ids, rows, PLACEHOLDERS)
    torch.testing.assert_close(out, _loop_splice(text, input_ids, rows), rtol=0, atol=0)


def test_text_only_batch_is_unchanged() -> None:
    input_ids = torch.tensor([[1, 2, 3], [4, 7, 8]])
    text = torch.randn(2, 3, HIDDEN)
    torch.testing.assert_close(splice_embeddings(text, input_ids, {}, PLACEHOLDERS), text, rtol=0, atol=0)
    out = splice_embeddings(text, input_ids, {"images": torch.zeros(0, HIDDEN)}, PLACEHOLDERS)
    torch.testing.assert_close(out, text, rtol=0, atol=0)


def test_count_mismatch_names_modality_and_counts() -> None:
    input_ids, text, rows = _batch()
    rows["images"] = torch.randn(12, HIDDEN)
    with pytest.raises(ValueError, match=r"modality 'images': 7 placeholder tokens in input_ids but 12 embedding rows"):
        splice_embeddings(text, input_ids, rows, PLACEHOLDERS)


def test_placeholders_of_an_absent_modality_are_a_mismatch() -> None:
    input_ids, text, rows = _batch()
    del rows["audio"]
    with pytest.raises(ValueError, match=r"modality 'audio': 5 placeholder tokens in input_ids but 0 embedding rows"):
        splice_embeddings(text, input_ids, rows, PLACEHOLDERS)


def test_modality_without_placeholder_id_is_named() -> None:
    input_ids, text, rows = _batch()
    rows["video"] = torch.randn(1, HIDDEN)
    with pytest.raises(ValueError, match=r"no placeholder id for modality\(ies\) \['video'\]"):
        splice_embeddings(text, input_ids, rows, PLACEHOLDERS)


def test_wrong_row_width_is_rejected() -> None:
    input_ids, text, rows = _batch()
    rows["audio"] = torch.randn(5, HIDDEN + 1)
    with pytest.raises(ValueError, match=r"'audio': embedding rows must be \[N, 4\], got \[5, 5\]"):
        splice_embeddings(text, input_ids, rows, PLACEHOLDERS)


def test_gradients_reach_modality_rows_and_text_outside_placeholders() -> None:
    input_ids, text, rows = _batch()
    text.requires_grad_(True)
    for tensor in rows.values():
        tensor.requires_grad_(True)
    weights = torch.randn(3, 8, HIDDEN)
    (splice_embeddings(text, input_ids, rows, PLACEHOLDERS) * weights).sum().backward()
    # d(out * w)/d(row) is w at the position the row was placed: placing w's rows mirrors the forward.
    for name, token in PLACEHOLDERS.items():
        torch.testing.assert_close(rows[name].grad, weights[input_ids == token], rtol=0, atol=0)
    is_text = (input_ids != 5) & (input_ids != 6)
    torch.testing.assert_close(text.grad, weights * is_text.unsqueeze(-1), rtol=0, atol=0)


def test_per_sample_counts_must_match_placeholders() -> None:
    input_ids, _, _ = _batch()
    check_tokens_per_sample("images", input_ids, 5, torch.tensor([0, 5, 2]))
    with pytest.raises(ValueError, match=r"'images': sample 0 has 0 placeholder tokens but 1 embedding rows"):
        check_tokens_per_sample("images", input_ids, 5, torch.tensor([1, 4, 2]))
    with pytest.raises(ValueError, match=r"'images': 7 placeholder tokens in input_ids but 8 embedding rows"):
        check_tokens_per_sample("images", input_ids, 5, torch.tensor([1, 5, 2]))
