"""How ``mimo train --nproc N [--nnodes M --node-rank K --master-addr A --master-port P]`` starts torchrun.

One node (``--nproc`` alone) uses torchrun's standalone rendezvous on a free local port, as it always has. Several
nodes use torchrun's static rendezvous: node 0 hosts the rendezvous store at ``A:P``, every node joins it, and
node ``K`` runs global ranks ``K*N .. K*N+N-1`` (torchrun numbers ranks by node rank, then local rank), which is how
a layout's ``rank_offset`` lands on machines.

Pure: the options are checked here (``ValueError`` with the offending value) before anything starts, so a typo on
one node fails at once instead of leaving the other nodes waiting for it at the rendezvous.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_MASTER_PORT = 29500
"""torchrun's own default, so ``--master-port`` may be left out as with torchrun."""

LAUNCH_OPTIONS = ("--nproc", "--nnodes", "--node-rank", "--master-addr", "--master-port")
"""The options that choose the launch; they are consumed here and never reach the processes torchrun starts."""

_HOST_WITH_PORT = re.compile(r"[^:\s]+:\d+")


@dataclass(frozen=True)
class Launch:
    """Where this node's processes sit in the job: ``nproc`` per node, ``nnodes`` nodes, this one ``node_rank``."""

    nproc: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int = DEFAULT_MASTER_PORT

    @property
    def world_size(self) -> int:
        """Every process of the job, on all nodes: the size the config's layout must tile."""
        return self.nproc * self.nnodes

    @property
    def ranks(self) -> range:
        """The global ranks this node runs."""
        return range(self.node_rank * self.nproc, (self.node_rank + 1) * self.nproc)

    def describe(self) -> str:
        """How the world size came about, for error messages."""
        if self.nnodes == 1:
            return f"--nproc {self.nproc}"
        return f"--nnodes {self.nnodes} x --nproc {self.nproc} = {self.world_size} processes"

    def torchrun_command(self, mimo_args: Sequence[str]) -> list[str]:
        """The command that starts this node's processes, each running ``python -m mimo <mimo_args>``."""
        if self.nnodes == 1:
            rendezvous = ["--standalone"]
        else:
            rendezvous = [f"--nnodes={self.nnodes}", f"--node-rank={self.node_rank}",
                          f"--master-addr={self.master_addr}", f"--master-port={self.master_port}"]
        return [sys.executable, "-m", "torch.distributed.run", *rendezvous, f"--nproc-per-node={self.nproc}",
                "-m", "mimo", *mimo_args]


def parse_launch(
    nproc: int | None,
    nnodes: str | None = None,
    node_rank: str | None = None,
    master_addr: str | None = None,
    master_port: str | None = None,
) -> Launch:
    """The launch the options ask for (values as typed on the command line; None: not given), or ``ValueError``."""
    if nproc is None:
        given = [name for name, value in zip(LAUNCH_OPTIONS[1:], (nnodes, node_rank, master_addr, master_port))
                 if value is not None]
        raise ValueError(f"{given[0]} needs --nproc N (the processes to start on each node)")
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    nodes = 1 if nnodes is None else _integer("--nnodes", nnodes, minimum=1)
    if nodes == 1:
        # Accepting them would hide a forgotten --nnodes: this node would train alone instead of joining the others.
        stray = [name for name, value in zip(LAUNCH_OPTIONS[2:], (node_rank, master_addr, master_port))
                 if value is not None]
        if stray:
            verb = "applies" if len(stray) == 1 else "apply"
            raise ValueError(f"{', '.join(stray)} only {verb} to a launch on several nodes (--nnodes M with M > 1); "
                             f"got {'no --nnodes' if nnodes is None else '--nnodes 1'}")
        return Launch(nproc=nproc)
    if node_rank is None:
        raise ValueError(f"--nnodes {nodes} needs --node-rank K (which node this is, 0..{nodes - 1}; 0 is the node "
                         f"at --master-addr)")
    rank = _integer("--node-rank", node_rank, minimum=0)
    if rank >= nodes:
        raise ValueError(f"--node-rank must be in 0..{nodes - 1} for --nnodes {nodes}, got {rank}")
    if master_addr is None:
        raise ValueError(f"--nnodes {nodes} needs --master-addr A (the address of node 0, which every node reaches)")
    return Launch(nproc=nproc, nnodes=nodes, node_rank=rank, master_addr=_address(master_addr),
                  master_port=DEFAULT_MASTER_PORT if master_port is None else _port(master_port))


def without_launch_options(argv: Sequence[str]) -> list[str]:
    """``argv`` less the launch options and their values: what each started process runs.

    argparse accepts unambiguous abbreviations (``--nn 2``), so a prefix of a launch option counts too. Every token
    starting with ``--`` is an option here (argparse rejects such values), so values are never mistaken for options.
    """
    rest: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
            continue
        name, has_value, _ = item.partition("=")
        if len(name) > 2 and name.startswith("--") and any(option.startswith(name) for option in LAUNCH_OPTIONS):
            skip = not has_value
            continue
        rest.append(item)
    return rest


def _integer(option: str, text: str, *, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{option} must be an integer >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise ValueError(f"{option} must be an integer >= {minimum}, got {value}")
    return value


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise ValueError(f"--master-port must be a TCP port number in 1..65535, got {text!r}")
    return port


def _address(text: str) -> str:
    if _HOST_WITH_PORT.fullmatch(text):
        host, _, port = text.rpartition(":")
        raise ValueError(f"--master-addr takes the address alone, got {text!r}: pass --master-addr {host} "
                         f"--master-port {port}")
    if not text or any(char.isspace() or char == "/" for char in text):
        raise ValueError(f"--master-addr must be a host name or an IP address of node 0, got {text!r}")
    return text
