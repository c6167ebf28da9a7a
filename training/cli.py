"""Command line: argparse keeps this process free of Prefect and light to start."""

from __future__ import annotations

import argparse
import logging
import sys

CONVERT = "convert-for-serving"
CHECK = "check"


def build_parser() -> argparse.ArgumentParser:
    """The parser for `python -m training stage1|stage2|merge`."""
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="LLaVA two-stage training. Overrides are dotted key=value pairs, e.g. stage2.method=qlora. "
        f"Also: `python -m training {CONVERT} SRC DST` (a `linear`-projector checkpoint vLLM can load) and "
        f"`python -m training {CHECK} --config FILE` (preflight the data).",
    )
    parser.add_argument("command", choices=["stage1", "stage2", "merge"])
    parser.add_argument("--config", required=True, help="YAML or TOML training config")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. stage1.learning_rate=1e-3")
    return parser


def build_check_parser() -> argparse.ArgumentParser:
    """The parser for `python -m training check --config FILE [--stage S] [--images header|decode]`."""
    parser = argparse.ArgumentParser(
        prog=f"python -m training {CHECK}",
        description="Preflight: check every record of the stages' data as training would read it (json, images, "
        "placeholder, template, tokenization, length) and save a report; exits 1 when any record would fail.",
    )
    parser.add_argument("--config", required=True, help="YAML or TOML training config")
    parser.add_argument("--stage", choices=["stage1", "stage2"], action="append",
                        help="the stage(s) to check (default: every stage whose data is set)")
    parser.add_argument("--images", choices=["header", "decode"], help="default: data.preflight_images (decode)")
    parser.add_argument("--workers", type=int, help="processes (default: data.preflight_workers, else all cores)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. stage2.data=other.json")
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
    if argv[:1] == [CHECK]:
        sys.exit(check(argv[1:]))
    args = build_parser().parse_intermixed_args(argv)
    from training.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.command == "merge":
        from training.merge import merge

        print(merge(cfg))
    else:
        from training.loop import train

        print(train(cfg, args.command) / "final")


def check(argv: list[str]) -> int:
    """`python -m training check`: print each report and where it is; 0 when every record passes, else 1."""
    from training.config import STAGE_NAMES, load_config
    from training.preflight import check_config

    args = build_check_parser().parse_intermixed_args(argv)
    cfg = load_config(args.config, args.overrides)
    stages = args.stage or [name for name in STAGE_NAMES if getattr(cfg, name).data is not None]
    if not stages:
        raise ValueError("no stage has data set: give stage1.data=... or stage2.data=...")
    failed = False
    for report, report_dir in check_config(cfg, stages, images=args.images, workers=args.workers):
        print(report.summary())
        print(f"  report: {report_dir}")
        failed = failed or not report.ok
    return 1 if failed else 0
