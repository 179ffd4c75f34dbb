"""Does pipelining pay? Step time of images | language pp=2 against the number of microbatches, same global batch.

    .venv/bin/python benchmarks/microbatches.py [--rounds 3] [--steps 20] [--counts 1 2 4 8] [--hidden 256]

Runs ``configs/tiny_vlm_hetero.yaml`` (images on rank 0, the language model over ranks 1-2) with a language model
of ``--hidden`` width (4 layers; the recipe's 64 is too small for any schedule to beat its transfers), 32 samples
of 96 tokens per step, and each microbatch count in turn; rounds alternate the order of the counts (the machine is
noisy). Prints per count the median step time over rounds (each round: the median of the steps after the first
5), the spread (min-max of the round medians) and the ratio to one microbatch (below 1: pipelining pays).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/tiny_vlm_hetero.yaml"
WARMUP_STEPS = 5


def step_time_s(count: int, hidden: int, steps: int, run_dir: Path) -> float:
    overrides = [f"train.num_microbatches={count}", "train.global_batch_size=32", f"train.steps={steps}",
                 "data.seq_length=96", "model.language.max_seq_len=96", f"model.language.hidden_size={hidden}",
                 "model.language.num_layers=4", "train.progress=false", "checkpoint.at_end=false"]
    command = [sys.executable, "-m", "mimo", "train", "--config", CONFIG, "--run-dir", str(run_dir), "--nproc", "3",
               *[arg for override in overrides for arg in ("--set", override)]]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(row["step_time_s"] for row in rows[WARMUP_STEPS:] or rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()
    times: dict[int, list[float]] = {count: [] for count in args.counts}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            order = args.counts if round_index % 2 == 0 else list(reversed(args.counts))
            for count in order:
                run_dir = Path(scratch) / f"r{round_index}_m{count}"
                times[count].append(step_time_s(count, args.hidden, args.steps, run_dir))
    one = statistics.median(times[args.counts[0]])
    print(f"{'microbatches':>12} {'step ms':>8} {'spread ms':>13} {'vs ' + str(args.counts[0]):>6}")
    for count, values in times.items():
        median = statistics.median(values)
        print(f"{count:>12} {1e3 * median:>8.1f} {1e3 * min(values):>6.1f}-{1e3 * max(values):<6.1f} "
              f"{median / one:>6.2f}")


if __name__ == "__main__":
    main()
