"""Tied parameters split over pipeline stages (a language model's embedding and head).

When a slice holds one copy of a tied parameter it says so in ``tied_parameters``: ``{local name: tie key}``,
e.g. ``{"lm_head.weight": "model.embed_tokens.weight"}`` on the last stage. The tie key is the name of the
canonical copy; checkpoints store every copy under it (so a checkpoint from any pipeline depth loads into any
other), and only the canonical copy counts in the gradient norm (the single-process model has one tensor).
"""

from __future__ import annotations

from torch import nn

__all__ = ["parameter_names", "tied_copies"]


def tied_copies(model: nn.Module) -> dict[str, str]:
    """``{full name of a copy: full name of the canonical parameter}`` for every tied copy ``model`` holds
    (a copy whose name equals its canonical one is the canonical copy itself)."""
    copies = {}
    for owner_name, owner in model.named_modules():
        prefix = f"{owner_name}." if owner_name else ""
        for local, canonical in getattr(owner, "tied_parameters", {}).items():
            copies[prefix + local] = prefix + canonical
    return copies


def parameter_names(model: nn.Module) -> dict[nn.Parameter, str]:
    """Each parameter's name for checkpoints: its own, or for a tied copy the canonical parameter's."""
    copies = tied_copies(model)
    return {parameter: copies.get(name, name) for name, parameter in model.named_parameters()}
