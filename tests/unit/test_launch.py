"""``mimo train --nproc N [--nnodes M --node-rank K --master-addr A --master-port P]``: the options are checked and
turned into the torchrun command without starting any process (``subprocess.call`` is replaced)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mimo import cli
from mimo.launch import DEFAULT_MASTER_PORT, Launch, parse_launch, without_launch_options

HETERO = "configs/tiny_vlm_hetero.yaml"
TWO_MODULES_ON_TWO_RANKS = ["--set", "layout.images={dp: 1, pp: 1, rank_offset: 0}",
                            "--set", "layout.language={dp: 1, pp: 1, rank_offset: 1}"]


def test_nproc_alone_is_the_standalone_launch_it_always_was():
    launch = parse_launch(3)
    assert launch == Launch(nproc=3) and launch.world_size == 3 and launch.ranks == range(3)
    assert launch.torchrun_command(["train", "--config", "x.yaml"]) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=3",
        "-m", "mimo", "train", "--config", "x.yaml",
    ]


def test_several_nodes_use_the_static_rendezvous_and_number_ranks_by_node():
    launch = parse_launch(2, "3", "1", "10.0.0.5", "29611")
    assert launch.world_size == 6
    assert launch.ranks == range(2, 4)  # node K holds K*N .. K*N+N-1
    assert launch.torchrun_command(["train"]) == [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=3", "--node-rank=1", "--master-addr=10.0.0.5",
        "--master-port=29611", "--nproc-per-node=2", "-m", "mimo", "train",
    ]


def test_the_master_port_defaults_to_torchruns_and_one_node_may_say_so():
    assert parse_launch(1, "2", "0", "node0").master_port == DEFAULT_MASTER_PORT == 29500
    assert parse_launch(4, "1") == Launch(nproc=4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ((None, "2"), "--nnodes needs --nproc N"),
        ((None, None, "1"), "--node-rank needs --nproc N"),
        ((None, None, None, "host"), "--master-addr needs --nproc N"),
        ((0,), "--nproc must be >= 1, got 0"),
        ((1, "0"), "--nnodes must be an integer >= 1, got 0"),
        ((1, "-1"), "--nnodes must be an integer >= 1, got -1"),
        ((1, "two"), "--nnodes must be an integer >= 1, got 'two'"),
        ((1, "2"), "--nnodes 2 needs --node-rank K (which node this is, 0..1"),
        ((1, "2", "2", "host"), "--node-rank must be in 0..1 for --nnodes 2, got 2"),
        ((1, "2", "-1", "host"), "--node-rank must be an integer >= 0, got -1"),
        ((1, "2", "first", "host"), "--node-rank must be an integer >= 0, got 'first'"),
        ((1, "2", "1"), "--nnodes 2 needs --master-addr A"),
        ((1, "2", "1", ""), "--master-addr must be a host name or an IP address of node 0, got ''"),
        ((1, "2", "1", "node 0"), "--master-addr must be a host name or an IP address of node 0, got 'node 0'"),
        ((1, "2", "1", "node0:1234"), "pass --master-addr node0 --master-port 1234"),
        ((1, "2", "1", "node0", "0"), "--master-port must be a TCP port number in 1..65535, got '0'"),
        ((1, "2", "1", "node0", "65536"), "--master-port must be a TCP port number in 1..65535, got '65536'"),
        ((1, "2", "1", "node0", "http"), "--master-port must be a TCP port number in 1..65535, got 'http'"),
        ((1, None, "0"), "--node-rank only applies to a launch on several nodes (--nnodes M with M > 1); "
                         "got no --nnodes"),
        ((1, "1", "0", "node0"), "--node-rank, --master-addr only apply to a launch on several nodes"),
        ((1, "1", None, None, "29500"), "--master-port only applies to a launch on several nodes"),
    ],
)
def test_bad_launch_options_are_named_with_their_value(options, message):
    with pytest.raises(ValueError) as error:
        parse_launch(*options)
    assert message in str(error.value)


def test_launch_options_are_not_passed_on_to_the_started_processes():
    argv = ["train", "--nproc", "2", "--config", "c.yaml", "--nnodes=2", "--node-rank", "1", "--set", "train.steps=3",
            "--master-addr", "h", "--master-port=29600", "--run-dir", "r"]
    assert without_launch_options(argv) == ["train", "--config", "c.yaml", "--set", "train.steps=3", "--run-dir", "r"]
    # argparse takes unambiguous abbreviations; they must go too, or each process would see a launch option again.
    assert without_launch_options(["train", "--npr", "2", "--node", "1", "--nn=2", "--config", "c"]) == [
        "train", "--config", "c"]


def test_no_other_train_option_starts_like_a_launch_option():
    """The abbreviation rule in without_launch_options relies on it."""
    train = cli.build_parser()._subparsers._group_actions[0].choices["train"]  # the train subcommand's parser
    others = [name for action in train._actions for name in action.option_strings
              if name.startswith("--") and name not in ("--nproc", "--nnodes", "--node-rank", "--master-addr",
                                                        "--master-port")]
    assert others and not [name for name in others if name.startswith(("--n", "--m"))]


class _NoLaunch:
    """Stands in for ``subprocess.call``: records the command instead of starting torchrun."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def __call__(self, command: list[str]) -> int:
        self.commands.append(command)
        return 0


@pytest.fixture
def no_launch(monkeypatch: pytest.MonkeyPatch) -> _NoLaunch:
    recorder = _NoLaunch()
    monkeypatch.setattr(subprocess, "call", recorder)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return recorder


def test_the_command_checks_the_layout_against_every_node_s_processes(no_launch, tmp_path, capsys):
    code = cli.main(["train", "--config", HETERO, "--run-dir", str(tmp_path), "--nproc", "1", "--nnodes", "2",
                     "--node-rank", "0", "--master-addr", "127.0.0.1"])
    assert code == 2 and no_launch.commands == []
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("mimo: error: ")
    assert "world_size is 2 (--nnodes 2 x --nproc 1 = 2 processes)" in error


def test_a_node_starts_its_share_of_a_world_that_fits_the_layout(no_launch, tmp_path):
    args = ["train", "--config", HETERO, *TWO_MODULES_ON_TWO_RANKS, "--run-dir", str(tmp_path)]
    code = cli.main([*args, "--nproc", "1", "--nnodes", "2", "--node-rank", "1", "--master-addr", "127.0.0.1",
                     "--master-port", "29612"])
    assert code == 0
    assert no_launch.commands == [[sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--node-rank=1",
                                   "--master-addr=127.0.0.1", "--master-port=29612", "--nproc-per-node=1",
                                   "-m", "mimo", *args]]


def test_nproc_alone_still_checks_and_launches_as_before(no_launch, tmp_path, capsys):
    args = ["train", "--config", HETERO, "--run-dir", str(tmp_path)]
    assert cli.main([*args, "--nproc", "2"]) == 2
    error = capsys.readouterr().err
    assert "world_size is 2" in error and "--nnodes" not in error
    assert cli.main([*args, "--nproc=3"]) == 0
    assert no_launch.commands == [[sys.executable, "-m", "torch.distributed.run", "--standalone",
                                   "--nproc-per-node=3", "-m", "mimo", *args]]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--nnodes", "2"], "mimo: error: --nnodes needs --nproc N"),
        (["--nproc", "1", "--nnodes", "2", "--node-rank", "5", "--master-addr", "h"],
         "mimo: error: --node-rank must be in 0..1 for --nnodes 2, got 5"),
        (["--nproc", "1", "--master-port", "99999"], "mimo: error: --master-port only applies"),
    ],
)
def test_bad_options_end_the_command_with_one_line_and_exit_code_2(no_launch, tmp_path, capsys, options, message):
    code = cli.main(["train", "--config", HETERO, "--run-dir", str(tmp_path), *options])
    error = capsys.readouterr().err
    assert code == 2 and no_launch.commands == []
    assert error.startswith(message) and error.count("\n") == 1


def test_a_launch_inside_torchrun_is_refused(no_launch, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = cli.main(["train", "--config", HETERO, "--run-dir", str(tmp_path), "--nproc", "1", "--nnodes", "2",
                     "--node-rank", "0", "--master-addr", "h"])
    assert code == 2 and no_launch.commands == []
    assert "--nproc given inside a torchrun launch" in capsys.readouterr().err
