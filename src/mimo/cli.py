"""Command line: ``mimo train --config configs/tiny_vlm.yaml [--set a.b=value ...] [--nproc N [--nnodes M ...]]``."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from collections.abc import Sequence

from mimo import hf_models
from mimo.config import MimoConfig, load_config
from mimo.errors import TrainingError
from mimo.launch import parse_launch, without_launch_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mimo", description="Train multimodal models with a layout per module.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a model from a YAML recipe")
    train.add_argument("--config", required=True, help="YAML recipe, e.g. configs/tiny_vlm.yaml")
    train.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.steps=10 (repeatable; the value is parsed as YAML)",
    )
    train.add_argument("--run-dir", help="where metrics go (overrides run_dir)")
    train.add_argument("--export", metavar="FILE", help="write the final weights as one safetensors file")
    train.add_argument("--export-hf", metavar="DIR",
                       help="write the final weights as Hugging Face folders (save_pretrained) + projections")
    train.add_argument("--resume", metavar="CHECKPOINT",
                       help="continue from 'latest' (in the run's checkpoint dir), a checkpoint folder or a root")
    train.add_argument("--init-from", metavar="PATH",
                       help="start from consolidated weights (a safetensors file, or an --export-hf folder)")
    train.add_argument(
        "--nproc", type=int, metavar="N",
        help="start N processes on this machine with torchrun (same as `torchrun --nproc-per-node N -m mimo ...`)",
    )
    # Strings, not type=int: mimo.launch checks them and names the bad value in a one-line error (exit code 2).
    train.add_argument("--nnodes", metavar="M", help="the job spans M machines, each running --nproc processes")
    train.add_argument("--node-rank", metavar="K",
                       help="which machine this is, 0..M-1 (node K runs ranks K*N..K*N+N-1); with --nnodes")
    train.add_argument("--master-addr", metavar="A", help="address of node 0, reachable from every node; with --nnodes")
    train.add_argument("--master-port", metavar="P",
                       help="free TCP port on node 0 for the rendezvous (default 29500); with --nnodes")
    export = commands.add_parser("export", help="consolidate a checkpoint into a safetensors file or HF folders")
    export.add_argument("--checkpoint", required=True, help="a checkpoint folder, or a root holding 'latest'")
    export.add_argument("--out", metavar="FILE", help="one safetensors file with every tensor (mimo names)")
    export.add_argument("--hf", metavar="DIR", help="Hugging Face folders (from_pretrained) + the projections")
    data = commands.add_parser("data", help="inspect a run's data")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    check = data_commands.add_parser("check", help="read every record as training would and list every problem")
    check.add_argument("--config", required=True, help="YAML recipe with data.source: conversations")
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    generate = commands.add_parser("generate", help="answer a prompt greedily with a checkpoint's model")
    generate.add_argument("--checkpoint", required=True, help="a checkpoint folder, or a root holding 'latest'")
    generate.add_argument("--prompt", required=True, help="the user's message")
    generate.add_argument("--image", action="append", default=[], metavar="FILE", help="an image (repeatable)")
    generate.add_argument("--audio", action="append", default=[], metavar="FILE", help="an audio clip (repeatable)")
    generate.add_argument("--max-new-tokens", type=int, default=32)
    timeline = commands.add_parser("timeline", help="draw a traced run (train.trace=true) as a PNG timeline")
    timeline.add_argument("run_dir", metavar="RUN_DIR", help="the run's folder, holding trace.json or trace/")
    timeline.add_argument("--out", metavar="PNG", help="where to write the figure (default: RUN_DIR/timeline.png)")
    timeline.add_argument("--step", type=int, metavar="N", help="the step to draw (default: a typical traced one)")
    hf = commands.add_parser("hf", help="make Hugging Face model folders to train, without a hub")
    hf_models.add_arguments(hf)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "train" and _asks_for_a_launch(args):
        return _relaunch_with_torchrun(args, argv)
    try:
        if args.command == "hf":
            return hf_models.main(args)
        if args.command == "data":
            return _check_data(args)
        if args.command == "timeline":
            from mimo.tracing.timeline_command import timeline

            return timeline(args.run_dir, out=args.out, step=args.step)
        if args.command == "generate":
            from mimo.generate import generate_from_checkpoint

            print(generate_from_checkpoint(args.checkpoint, args.prompt, images=args.image, audio=args.audio,
                                           max_new_tokens=args.max_new_tokens))
            return 0
        if args.command == "export":
            from mimo.training.checkpoint_export import export_checkpoint

            for written in export_checkpoint(args.checkpoint, args.out, hf=args.hf):
                print(f"written: {written}")
            return 0
        config = load_config(args.config, _overrides(args))
        from mimo.run import run_training  # deferred: parsing errors should not wait for torch to import

        resume = args.resume
        if resume == "latest":
            resume = config.checkpoint_dir  # the root: its 'latest' pointer names the checkpoint
        run_training(config, export_path=args.export, export_hf=args.export_hf, resume=resume,
                     init_from=args.init_from)
    except ValueError as error:
        print(f"mimo: error: {error}", file=sys.stderr)
        return 2
    except TrainingError as error:
        print(f"mimo: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mimo: interrupted (no checkpoint written; SIGTERM stops cleanly with one)", file=sys.stderr)
        return 130
    return 0


def _check_data(args: argparse.Namespace) -> int:
    from mimo.data.conversations.check import check_data

    reports = check_data(load_config(args.config, list(args.overrides)))
    for report in reports:
        print("\n".join(report.lines()))
    problems = sum(len(report.problems) for report in reports)
    print(f"{problems} problem(s)" if problems else "no problems")
    return 1 if problems else 0


def _asks_for_a_launch(args: argparse.Namespace) -> bool:
    return any(value is not None for value in (args.nproc, args.nnodes, args.node_rank, args.master_addr,
                                               args.master_port))


def _relaunch_with_torchrun(launch_args: argparse.Namespace, argv: list[str]) -> int:
    rest = without_launch_options(argv)
    try:  # Fail here, once and with exit code 2, rather than once per process under torchrun.
        launch = parse_launch(launch_args.nproc, launch_args.nnodes, launch_args.node_rank, launch_args.master_addr,
                              launch_args.master_port)
        if "WORLD_SIZE" in os.environ:
            raise ValueError("--nproc given inside a torchrun launch; drop one of them")
        args = build_parser().parse_args(rest)
        config = load_config(args.config, _overrides(args))
        from mimo.run import check_paths
        from mimo.training.run_plan import plan_run

        check_paths(config, init_from=args.init_from, export_hf=args.export_hf)
        try:
            plan_run(config, world_size=launch.world_size)
        except ValueError as error:
            if launch.nnodes == 1:
                raise
            raise ValueError(f"{error} ({launch.describe()})") from None
        _check_model_structure(config)
    except ValueError as error:
        print(f"mimo: error: {error}", file=sys.stderr)
        return 2
    return subprocess.call(launch.torchrun_command(rest))


def _check_model_structure(config: MimoConfig) -> None:
    """A Hugging Face language model of another structure is found here once, not on every rank."""
    from mimo.model.hf.language_config import HFLanguageConfig

    if isinstance(config.model.language, HFLanguageConfig):
        from mimo.model.hf.language import check_structure

        check_structure(config.model.language)


def _overrides(args: argparse.Namespace) -> list[str]:
    return list(args.overrides) + ([f"run_dir={args.run_dir}"] if args.run_dir else [])


if __name__ == "__main__":
    sys.exit(main())
