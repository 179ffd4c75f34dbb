"""Place each modality's rows at its placeholder tokens in the text embeddings."""

from __future__ import annotations

from torch import Tensor

__all__ = ["check_tokens_per_sample", "splice_embeddings"]


def _count_mismatch(name: str, num_placeholders: int, num_rows: int) -> ValueError:
    return ValueError(
        f"modality {name!r}: {num_placeholders} placeholder tokens in input_ids but {num_rows} embedding rows"
    )


def splice_embeddings(
    text_embeddings: Tensor,
    input_ids: Tensor,
    modality_embeddings: dict[str, Tensor],
    placeholder_ids: dict[str, int],
) -> Tensor:
    """Return ``[B, S, H]`` text embeddings with every modality's ``[N_m, H]`` rows at its placeholder positions.

    Rows fill the positions where ``input_ids == placeholder_ids[m]`` in row-major order over ``[B, S]``
    (sample 0 left to right, then sample 1, ...), so rows must be sample-major. The result is differentiable
    with respect to the text embeddings (at non-placeholder positions) and to the modality rows.

    Raises:
        ValueError: a modality without a placeholder id, or a modality (present or not) whose placeholder
            count in ``input_ids`` differs from its row count, or mismatched shapes.
    """
    unknown = [name for name in modality_embeddings if name not in placeholder_ids]
    if unknown:
        raise ValueError(f"no placeholder id for modality(ies) {unknown}; known: {placeholder_ids}")
    if text_embeddings.ndim != 3 or tuple(input_ids.shape) != tuple(text_embeddings.shape[:2]):
        raise ValueError(
            f"text_embeddings must be [B, S, H] matching input_ids [B, S], got {list(text_embeddings.shape)} "
            f"and {list(input_ids.shape)}"
        )
    hidden = text_embeddings.shape[2]
    combined = text_embeddings
    for name, token in placeholder_ids.items():
        mask = input_ids == token
        num_placeholders = int(mask.sum())
        rows = modality_embeddings.get(name)
        num_rows = 0 if rows is None else rows.shape[0]
        if num_placeholders != num_rows:
            raise _count_mismatch(name, num_placeholders, num_rows)
        if rows is None or num_rows == 0:
            continue
        if rows.ndim != 2 or rows.shape[1] != hidden:
            raise ValueError(f"modality {name!r}: embedding rows must be [N, {hidden}], got {list(rows.shape)}")
        # The [B, S, 1] mask broadcasts over H; masked_scatter consumes the source in row-major order.
        combined = combined.masked_scatter(mask.unsqueeze(-1), rows.to(combined.dtype))
    return combined


def check_tokens_per_sample(name: str, input_ids: Tensor, placeholder_id: int, tokens_per_sample: Tensor) -> None:
    """Raise ``ValueError`` unless each sample has as many placeholders as the modality gave it rows.

    A total mismatch is reported like ``splice_embeddings`` does; equal totals with a different per-sample
    split (rows that would land in the wrong sample) name the first sample that differs.
    """
    placeholders_per_sample = (input_ids == placeholder_id).sum(dim=1)
    if tokens_per_sample.shape != placeholders_per_sample.shape:
        raise ValueError(
            f"modality {name!r}: tokens_per_sample has shape {list(tokens_per_sample.shape)} but input_ids has "
            f"{input_ids.shape[0]} samples"
        )
    num_placeholders, num_rows = int(placeholders_per_sample.sum()), int(tokens_per_sample.sum())
    if num_placeholders != num_rows:
        raise _count_mismatch(name, num_placeholders, num_rows)
    differs = (placeholders_per_sample != tokens_per_sample.to(placeholders_per_sample.device)).nonzero()
    if differs.numel():
        sample = int(differs[0, 0])
        raise ValueError(
            f"modality {name!r}: sample {sample} has {int(placeholders_per_sample[sample])} placeholder tokens "
            f"but {int(tokens_per_sample[sample])} embedding rows (per sample: placeholders "
            f"{placeholders_per_sample.tolist()}, rows {tokens_per_sample.tolist()})"
        )
