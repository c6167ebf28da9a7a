"""Command line: argparse keeps this process free of Prefect and light to start."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from typing import Any

CONVERT = "convert-for-serving"
CHECK = "check"
INFER = "infer"

# Known-harmless third-party messages: logger name -> message pattern. Only these are dropped; everything
# else those libraries log (real warnings included) is kept. Also used by the `vistune` CLI.
HARMLESS_LOG_MESSAGES: dict[str, re.Pattern[str]] = {
    # bitsandbytes' optional CPU kernel; 4-bit works without it.
    "bitsandbytes.backends.cpu.ops": re.compile(r"Failed to load CPU gemm_4bit_forward"),
    # transformers picks the PIL image processor by itself when torchvision is absent (the CPU install).
    "transformers.utils.import_utils": re.compile(r"requires torchvision \(not installed\); falling back to"),
    # resizing the tiny model's embeddings for the <image> token: the documented default, not a problem.
    "transformers.modeling_utils": re.compile(r"The new (embeddings|lm_head weights) will be initialized from a "
                                              r"multivariate normal"),
}


class DropMessages(logging.Filter):
    """Drops the records whose message matches `pattern`; every other record passes."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        """False (drop) for a matching message."""
        return not self.pattern.search(record.getMessage())


def silence_known_noise(*, progress_bars: bool | None = None) -> None:
    """Install the filters above (idempotent), before the libraries are imported or after.

    `progress_bars=False` (default: when stderr is not a terminal) also turns off Hugging Face's bars
    ("Writing model shards", "Loading weights"): piped into a log they are only empty lines."""
    for name, pattern in HARMLESS_LOG_MESSAGES.items():
        logger = logging.getLogger(name)  # the same object the library gets at import
        if not any(isinstance(f, DropMessages) and f.pattern.pattern == pattern.pattern for f in logger.filters):
            logger.addFilter(DropMessages(pattern))
    if progress_bars is None:
        progress_bars = sys.stderr.isatty()
    if not progress_bars:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read by huggingface_hub (and so transformers) at import
        if "transformers" in sys.modules:  # already imported: switch its bars off directly
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()


def build_parser() -> argparse.ArgumentParser:
    """The parser for `python -m training stage1|stage2|merge`."""
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="LLaVA two-stage training. Overrides are dotted key=value pairs, e.g. stage2.method=qlora. "
        f"Also: `python -m training {CONVERT} SRC DST` (a `linear`-projector checkpoint vLLM can load) and "
        f"`python -m training {CHECK} --config FILE` (preflight the data) and `python -m training {INFER} "
        "--model CKPT --questions Q.jsonl --image-root DIR --out A.jsonl` (answer LLaVA eval questions).",
    )
    parser.add_argument("command", choices=["stage1", "stage2", "merge"])
    return _config_arguments(parser, "stage1.learning_rate=1e-3")


def _config_arguments(parser: argparse.ArgumentParser, example: str) -> argparse.ArgumentParser:
    # Every command that reads a training config takes it the same way.
    parser.add_argument("--config", required=True, metavar="FILE", help="YAML or TOML training config")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=f"config overrides, e.g. {example}")
    return parser


def build_check_parser() -> argparse.ArgumentParser:
    """The parser for `python -m training check --config FILE [--stage S] [--images header|decode]`."""
    parser = argparse.ArgumentParser(
        prog=f"python -m training {CHECK}",
        description="Preflight: check every record of the stages' data as training would read it (json, images, "
        "placeholder, template, tokenization, length) and save a report; exits 1 when any record would fail.",
    )
    parser.add_argument("--stage", choices=["stage1", "stage2"], action="append",
                        help="the stage(s) to check (default: every stage whose data is set)")
    parser.add_argument("--images", choices=["header", "decode"], help="default: data.preflight_images (decode)")
    parser.add_argument("--workers", type=int, help="processes (default: data.preflight_workers, else all cores)")
    return _config_arguments(parser, "stage2.data=other.json")


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


def build_infer_parser() -> argparse.ArgumentParser:
    """The parser for `python -m training infer` (the same options as `vistune infer`)."""
    from training.inference import GenerationParams

    defaults = GenerationParams()
    parser = argparse.ArgumentParser(
        prog=f"python -m training {INFER}",
        description="Answer a LLaVA questions file ({question_id, image, text, category} lines) with a checkpoint, "
        "appending LLaVA answer lines; a rerun skips the question ids already answered.",
    )
    parser.add_argument("--model", required=True, metavar="CKPT",
                        help="a stage's final/ (full model or LoRA/QLoRA adapter) or merged/")
    parser.add_argument("--questions", required=True, metavar="Q.jsonl", help="LLaVA questions file")
    parser.add_argument("--image-root", required=True, metavar="DIR", help="folder the questions' images are in")
    parser.add_argument("--out", required=True, metavar="A.jsonl", help="answers file (appended; resumed)")
    parser.add_argument("--backend", default="transformers", help="transformers (default) or vllm")
    parser.add_argument("--batch-size", type=int, default=8, metavar="N", help="questions per generate call")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens, metavar="N")
    parser.add_argument("--temperature", type=float, default=defaults.temperature, metavar="T",
                        help="0 (default): greedy")
    parser.add_argument("--top-p", type=float, default=defaults.top_p, metavar="P", help="with --temperature > 0")
    parser.add_argument("--model-id", metavar="NAME", help="model_id in the answers (default: e.g. stage2/final)")
    return parser


def infer(argv: list[str]) -> int:
    """`python -m training infer`: print the answers file; a bad input is one line and exit 2."""
    from training.inference import BackendUnavailable, GenerationParams, InferInputError, run_infer

    args = build_infer_parser().parse_args(argv)
    try:
        params = GenerationParams(args.max_new_tokens, args.temperature, args.top_p)
        summary = run_infer(
            args.model, args.questions, args.image_root, args.out, backend=args.backend, params=params,
            batch_size=args.batch_size, model_id=args.model_id, progress=sys.stderr.isatty(),
        )
    except (FileNotFoundError, InferInputError, ValueError, BackendUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("training.inference").info(
        "%s: %d new answer(s), %d already stored, %d tokens generated", summary.model_id, summary.answered,
        summary.already_stored, summary.tokens_generated,
    )
    print(summary.out)
    return 0


def main(argv: list[str] | None = None) -> None:
    """Run a stage, the merge or the serving conversion and print where the result is."""
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    silence_known_noise()
    if argv[:1] == [CONVERT]:
        from training.serving import convert_for_serving

        args = build_convert_parser().parse_args(argv[1:])
        print(convert_for_serving(args.src, args.dst))
        return
    if argv[:1] == [CHECK]:
        sys.exit(check(argv[1:]))
    if argv[:1] == [INFER]:
        sys.exit(infer(argv[1:]))
    args = build_parser().parse_intermixed_args(argv)
    cfg = _load_config_or_exit(args.config, args.overrides)
    if args.command == "merge":
        from training.merge import merge

        print(merge(cfg))
    else:
        from training.loop import train

        print(train(cfg, args.command) / "final")


def _load_config_or_exit(path: str, overrides: list[str]) -> Any:
    # A missing file or a bad value is the user's to fix: one line and exit 2, not a traceback.
    from training.config import load_config

    try:
        return load_config(path, overrides)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def check(argv: list[str]) -> int:
    """`python -m training check`: print each report and where it is; 0 when every record passes, else 1."""
    from training.config import STAGE_NAMES
    from training.preflight import check_config

    args = build_check_parser().parse_intermixed_args(argv)
    cfg = _load_config_or_exit(args.config, args.overrides)
    stages = args.stage or [name for name in STAGE_NAMES if getattr(cfg, name).data is not None]
    if not stages:
        raise ValueError("no stage has data set: give stage1.data=... or stage2.data=...")
    failed = False
    for report, report_dir in check_config(cfg, stages, images=args.images, workers=args.workers):
        print(report.summary())
        print(f"  report: {report_dir}")
        failed = failed or not report.ok
    return 1 if failed else 0
