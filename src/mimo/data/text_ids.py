"""Which token ids the synthetic text may use: the longest run free of padding and placeholders."""

from __future__ import annotations

from mimo.model.configs import PAD_TOKEN_ID, MimoModelConfig

__all__ = ["text_id_range"]


def text_id_range(model_config: MimoModelConfig) -> tuple[int, int]:
    """``(first_text_id, num_text_ids)``: the longest contiguous id range avoiding padding and placeholders.

    Ties go to the lowest range. The range is contiguous so the text can be an arithmetic sequence modulo its size.
    """
    reserved = {PAD_TOKEN_ID, *model_config.placeholder_ids.values()}
    best_start, best_size, start = 0, 0, None
    for token in range(model_config.language.vocab_size + 1):
        free = token < model_config.language.vocab_size and token not in reserved
        if free and start is None:
            start = token
        elif not free and start is not None:
            if token - start > best_size:
                best_start, best_size = start, token - start
            start = None
    if best_size == 0:
        raise ValueError(
            f"vocab_size={model_config.language.vocab_size} leaves no text ids besides padding ({PAD_TOKEN_ID}) "
            f"and placeholders {sorted(model_config.placeholder_ids.values())}"
        )
    return best_start, best_size
