"""``StageGroup``: the stages of several modules that one rank holds, as one model for parameters and checkpoints.

Where encoders share the ranks of a pipelined language model, a rank runs an encoder and a language stage, each
driven by its own runner. The group registers their parts under the names a whole ``MimoModel`` gives them
(``language.*``, ``modalities.<name>.*``), so optimizers, freezing, checkpoints and exports see one model slice
named like any other; the stages themselves stay the modules that run.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from mimo.model.configs import LANGUAGE_MODULE

__all__ = ["StageGroup"]


class StageGroup(nn.Module):
    """``language`` and ``modalities`` of the stages in ``stages`` (module name -> its stage on this rank)."""

    def __init__(self, stages: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.modalities = nn.ModuleDict()
        for module, stage in stages.items():
            if module == LANGUAGE_MODULE:
                self.language = stage.language
            else:
                self.modalities[module] = stage.modalities[module]

    def forward(self, *args: object, **kwargs: object) -> None:
        raise TypeError("a StageGroup only names its stages' parameters; each stage runs on its own")
