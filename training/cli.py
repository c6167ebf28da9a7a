"""Command line: argparse keeps this process free of Prefect and light to start."""

from __future__ import annotations

import argparse
import logging
import sys

CONVERT = "convert-for-serving"


def build_parser() -> argparse.ArgumentParser:
    """The parser for `python -m training stage1|stage2|merge`."""
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="LLaVA two-stage training. Overrides are dotted key=value pairs, e.g. stage2.method=qlora. "
        f"Also: `python -m training {CONVERT} SRC DST` (a `linear`-projector checkpoint vLLM can load).",
    )
    parser.add_argument("command", choices=["stage1", "stage2", "merge"])
    parser.add_argument("--config", required=True, help="YAML or TOML training config")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. stage1.learning_rate=1e-3")
    return parser


def build_convert_parser() -> argparse.ArgumentParser:
    """The parser for `python -m training convert-for-serving SRC DST`."""
    parser = argparse.ArgumentParser(
        prog=f"python -m training {CONVERT}",
        description="Copy a checkpoint with the paper's `linear` projector into the exact relu form that vLLM loads "
        "(training/serving.py).",
    )
    parser.add_argument("src", help="a Llava checkpoint dir (stage1/final, stage2/final with method full, merged)")
    parser.add_argument("dst", help="where to write the converted checkpoint and its processor")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run a stage, the merge or the serving conversion and print where the result is."""
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if argv[:1] == [CONVERT]:
        from training.serving import convert_for_serving

        args = build_convert_parser().parse_args(argv[1:])
        print(convert_for_serving(args.src, args.dst))
        return
    args = build_parser().parse_intermixed_args(argv)
    from training.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.command == "merge":
        from training.merge import merge

        print(merge(cfg))
    else:
        from training.loop import train

        print(train(cfg, args.command) / "final")
