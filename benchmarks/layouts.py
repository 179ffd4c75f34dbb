"""Step time and throughput of the tiny recipes under several layouts, measured in one run so they compare.

    .venv/bin/python benchmarks/layouts.py [--steps 40]

Prints one row per layout: processes, median step time (steps after the first 5), loss tokens per second, and the
final loss. These are CPU figures on tiny models: they show the overhead of pipelining and bridges, not the
speed-up a large model gets from moving its encoder off the language model's critical path.
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

LAYOUTS = [
    ("colocated, 1 process", "configs/tiny_vlm.yaml", 1, []),
    ("colocated, dp=2", "configs/tiny_vlm.yaml", 2, []),
    ("images | language pp=2", "configs/tiny_vlm_hetero.yaml", 3, []),
    ("images dp=2 | language pp=2", "configs/tiny_vlm_fan_in.yaml", 4, []),
    ("images + audio | language pp=2", "configs/tiny_avlm_hetero.yaml", 4, []),
]


def run(config: str, nproc: int, steps: int, run_dir: Path, extra: list[str]) -> list[dict]:
    command = [sys.executable, "-m", "mimo", "train", "--config", config, "--run-dir", str(run_dir),
               "--set", f"train.steps={steps}", "--set", "train.progress=false", "--set", "checkpoint.at_end=false",
               *extra]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    print(f"{'layout':<34} {'procs':>5} {'step ms':>8} {'tokens/s':>9} {'final loss':>10}")
    with tempfile.TemporaryDirectory() as scratch:
        for index, (name, config, nproc, extra) in enumerate(LAYOUTS):
            rows = run(config, nproc, args.steps, Path(scratch) / str(index), extra)
            timed = rows[5:] or rows
            step_s = statistics.median(row["step_time_s"] for row in timed)
            tokens_s = sum(row["tokens"] for row in timed) / sum(row["step_time_s"] for row in timed)
            print(f"{name:<34} {nproc:>5} {1000 * step_s:>8.1f} {tokens_s:>9,.0f} {rows[-1]['loss']:>10.4f}")


if __name__ == "__main__":
    main()
