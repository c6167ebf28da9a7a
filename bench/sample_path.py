"""How many project files and functions one sample crosses: `vistune demo --limit 1 --no-train`, traced.

Run from a checkout's root: `python bench/sample_path.py [--root PATH]`. It runs the demo in-process
(ingest -> plan -> send to the simulator -> validate -> dedup -> export -> report) for one image with
`sys.setprofile`, and counts the distinct project source files and functions entered, leaving out the
simulator (tests/), Python's own modules and third-party packages. Used for issue #20's "files on one
sample's path" figure, before and after the layout change (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the checkout to trace (default: here)")
    parser.add_argument("--list", action="store_true", help="print every file with its function count")
    args = parser.parse_args()
    root = args.root.resolve()
    sys.path.insert(0, str(root))
    os.environ.update({"OPENAI_API_KEY": "", "OPENAI_BASE_URL": "", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    from typer.testing import CliRunner

    from flows.cli import get_app

    app = get_app()
    functions: set[tuple[str, str]] = set()
    project = [str(root / d) + os.sep for d in ("tasks", "flows", "schemas", "training")]

    def profile(frame, event, _arg):
        if event == "call":
            path = frame.f_code.co_filename
            if any(path.startswith(p) for p in project):
                functions.add((path, frame.f_code.co_qualname))

    with tempfile.TemporaryDirectory() as out:
        sys.setprofile(profile)
        try:
            result = CliRunner().invoke(app, ["demo", "--out", out, "--limit", "1", "--no-train"])
        finally:
            sys.setprofile(None)
    if result.exit_code != 0:
        sys.exit(f"the demo failed:\n{result.output[-2000:]}")
    per_file = Counter(Path(path).relative_to(root).as_posix() for path, _ in functions)
    if args.list:
        for name, n in sorted(per_file.items()):
            print(f"{n:4d}  {name}")
    print(f"{len(per_file)} files, {len(functions)} functions entered")


if __name__ == "__main__":
    main()
