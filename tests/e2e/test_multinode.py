"""Two "nodes" on this machine over loopback: each a ``mimo train --nnodes 2 --node-rank K`` (or a plain torchrun with
a rendezvous) starting one process, images on node 0's rank and language on node 1's. They must train exactly as
one process running the whole model: the same loss at every step and the same final weights (relative 1e-5).

Every process runs in a session of its own and is killed, with everything it started, when the test ends; a
rank that stops answering ends its peer within ``train.collective_timeout_s``, and each launch is waited for with
a deadline, so a hang fails the test in seconds rather than at the suite's timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch

from mimo.checkpoint import CheckpointStore
from mimo.config import load_config
from mimo.export import load_safetensors
from mimo.model import MimoModel
from tests.e2e.launch import ROOT, free_port, read_metrics
from tests.parity.harness import assert_same_training

pytestmark = pytest.mark.e2e

STEPS = 3
RECIPE = "configs/tiny_vlm_hetero.yaml"
OVERRIDES = [
    f"train.steps={STEPS}", "train.progress=false", "train.collective_timeout_s=10",
    "optim.default={name: sgd, lr: 0.3}", "optim.lr_schedule={decay: constant}",
]
TWO_NODE_LAYOUT = ["layout.images={dp: 1, pp: 1, rank_offset: 0}", "layout.language={dp: 1, pp: 1, rank_offset: 1}"]
"""Images on rank 0 (node 0), language on rank 1 (node 1): every step crosses the nodes both ways."""
DEADLINE_S = 90.0
LOG_TAIL_CHARS = 3000


def _sets(overrides: Sequence[str]) -> list[str]:
    return [item for override in overrides for item in ("--set", override)]


def _train_args(run_dir: Path, export: Path, layout: Sequence[str]) -> list[str]:
    return ["train", "--config", RECIPE, *_sets([*OVERRIDES, *layout]), "--run-dir", str(run_dir),
            "--export", str(export)]


class Launches:
    """Commands started together, each in its own session with its output in files; killed (with every process
    they started, torchrun's workers included, which sit in sessions of their own) when the block ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def __enter__(self) -> Launches:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for _, process in self.started:
            for pid in [*_descendants(process.pid), process.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            process.wait(timeout=10)

    def start(self, name: str, command: Sequence[str]) -> None:
        env = {key: value for key, value in os.environ.items()
               if key not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
        # One thread per process: the ranks share 2 cores with the reference run.
        env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(list(command), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.started.append((name, process))

    def wait_all(self, timeout_s: float) -> None:
        """Every command exits 0 within ``timeout_s``; otherwise fail with every command's output."""
        deadline = time.monotonic() + timeout_s
        while any(process.poll() is None for _, process in self.started):
            failed = [name for name, process in self.started if process.poll() not in (None, 0)]
            if failed:
                # One node failing leaves the other waiting for it: no need to wait for its timeout.
                raise AssertionError(f"{failed} failed\n{self.report()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s\n{self.report()}")
            time.sleep(0.1)
        codes = {name: process.returncode for name, process in self.started}
        assert set(codes.values()) == {0}, f"exit codes {codes}\n{self.report()}"

    def report(self) -> str:
        parts = []
        for name, process in self.started:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")[-LOG_TAIL_CHARS:]
            parts.append(f"--- {name}: {' '.join(map(str, process.args))}\nexit code {process.poll()}\n{text}")
        return "\n".join(parts)


def _descendants(pid: int) -> list[int]:
    """Every living process below ``pid`` (from /proc), deepest last, so the kill reaches torchrun's workers."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # The command name in parentheses may hold spaces: the parent pid is the second field after it.
                parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(parent, []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        children = [child for parent in frontier for child in parents.get(parent, [])]
        found.extend(children)
        frontier = children
    return found


def _mimo_node(node_rank: int, port: int, args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "mimo", *args, "--nproc", "1", "--nnodes", "2", "--node-rank", str(node_rank),
            "--master-addr", "127.0.0.1", "--master-port", str(port)]


def _torchrun_node(port: int, args: Sequence[str]) -> list[str]:
    """A plain torchrun with a c10d rendezvous: the node ranks are drawn at the rendezvous, not given."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
            "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=mimo-multinode-test",
            "-m", "mimo", *args]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[float], dict[str, torch.Tensor]]:
    """The reference: one process, the whole model (losses per step and the exported weights)."""
    folder = tmp_path_factory.mktemp("one_process")
    with Launches(folder) as launches:
        launches.start("one", [sys.executable, "-m", "mimo",
                               *_train_args(folder / "run", folder / "one.safetensors", ["layout={}"])])
        launches.wait_all(DEADLINE_S)
    return [row["loss"] for row in read_metrics(folder / "run")], load_safetensors(folder / "one.safetensors")


def _initial_weights() -> dict[str, torch.Tensor]:
    cfg = load_config(ROOT / RECIPE, [*OVERRIDES, *TWO_NODE_LAYOUT])
    return {name: t.detach().clone() for name, t in MimoModel(cfg.model, seed=cfg.train.seed).state_dict().items()}


def _assert_matches_one_process(run_dir: Path, export: Path, one_process) -> None:
    losses = [row["loss"] for row in read_metrics(run_dir)]
    assert len(losses) == STEPS, losses
    ref_losses, ref_weights = one_process
    assert_same_training(losses, load_safetensors(export), ref_losses, ref_weights, initial=_initial_weights())


@pytest.mark.timeout(150)
def test_two_nodes_over_loopback_train_as_one_process(tmp_path, one_process):
    run_dir, export = tmp_path / "run", tmp_path / "two_nodes.safetensors"
    args = _train_args(run_dir, export, TWO_NODE_LAYOUT)
    port = free_port()
    with Launches(tmp_path / "logs") as launches:
        for node_rank in (0, 1):
            launches.start(f"node{node_rank}", _mimo_node(node_rank, port, args))
        launches.wait_all(DEADLINE_S)
    _assert_matches_one_process(run_dir, export, one_process)
    # Every rank wrote its own part of the final checkpoint into the one shared folder, and rank 0 sealed all of it.
    checkpoint = CheckpointStore(run_dir / "checkpoints").latest()
    assert checkpoint is not None and checkpoint.name == f"step_{STEPS:08d}"
    listed = {entry.path for entry in CheckpointStore(run_dir / "checkpoints").verify(checkpoint).files}
    assert {"dcp/__0_0.distcp", "dcp/__1_0.distcp"} <= listed, sorted(listed)


@pytest.mark.timeout(150)
def test_plain_torchrun_with_a_rendezvous_on_each_node_trains_as_one_process(tmp_path, one_process):
    run_dir, export = tmp_path / "run", tmp_path / "two_nodes.safetensors"
    args = _train_args(run_dir, export, TWO_NODE_LAYOUT)
    port = free_port()
    with Launches(tmp_path / "logs") as launches:
        for node in ("node_a", "node_b"):
            launches.start(node, _torchrun_node(port, args))
        launches.wait_all(DEADLINE_S)
    _assert_matches_one_process(run_dir, export, one_process)



def _probe_disks(rank: int, world_size: int, base: str) -> tuple[str | None, str | None, list[str]]:
    """Rank r's view: one folder every rank sees, then a folder per rank (each machine's own disk)."""
    from mimo.run import check_shared_directory

    outcomes = []
    for path in (Path(base) / "shared", Path(base) / f"local{rank}"):
        try:
            check_shared_directory("checkpoint.dir", path, rank=rank)
            outcomes.append(None)
        except ValueError as error:
            outcomes.append(str(error))
    return outcomes[0], outcomes[1], sorted(p.name for p in Path(base).rglob("*") if p.is_file())


@pytest.mark.timeout(60)
def test_a_checkpoint_folder_that_only_one_machine_sees_is_refused_before_training(tmp_path):
    from tests.distributed.launcher import run_ranks

    results = run_ranks(2, _probe_disks, str(tmp_path / "disks"), tmp_path=tmp_path, timeout_s=45,
                        collective_timeout_s=15)
    assert [shared for shared, _, _ in results] == [None, None]
    local0, local1 = results[0][1], results[1][1]
    assert local1 is not None and "is not shared by every machine of the run: rank 1" in local1
    assert local0 == f"rank 1 failed: {local1}"
    assert results[0][2] == []  # rank 0 removed its probe files (it looks last: after every rank has looked)
