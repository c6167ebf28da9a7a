"""Command line: argparse keeps this process free of Prefect and light to start."""

from __future__ import annotations

import argparse
import logging


def build_parser() -> argparse.ArgumentParser:
    """The parser for `python -m training`."""
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="LLaVA two-stage training. Overrides are dotted key=value pairs, e.g. stage2.method=qlora.",
    )
    parser.add_argument("command", choices=["stage1", "stage2", "merge"])
    parser.add_argument("--config", required=True, help="YAML or TOML training config")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. stage1.learning_rate=1e-3")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run a stage or the merge and print where the result is."""
    args = build_parser().parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from training.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.command == "merge":
        from training.merge import merge

        print(merge(cfg))
    else:
        from training.loop import train

        print(train(cfg, args.command) / "final")
