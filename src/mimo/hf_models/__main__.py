"""``python -m mimo.hf_models tiny --out DIR [--family llama|qwen2] [--seed N]`` or ``... smollm2 --out DIR``."""

import argparse
import sys

from mimo.hf_models import add_arguments, main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m mimo.hf_models", description="Write Hugging Face model folders usable without a model hub."
    )
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
