"""Peak memory of dedup and export before and after issue 16 goal 5's chunking, each in its own process.

The "before" side is `tasks/curation/{dedup,export}.py` at commit `BEFORE_COMMIT` (everything in memory at
once), loaded from git into a temporary module; "after" is the working tree's (dedup by image ranges and
MinHash runs, export streamed in batches). Every side runs alone in a fresh process on the same database
and reports its seconds and VmHWM (the process's peak resident memory) before and after the step. The
export sides write to their own folders and the script checks that their files are byte-identical (JSON)
and equal (Parquet rows); dedup's `duplicates` rows of each side are compared too.

    python bench/curate_memory.py --db /tmp/curmem/s158k.duckdb --sides before,after
    python bench/curate_memory.py --db /tmp/curmem/s790k.duckdb --sides after --scale-from /tmp/curmem/s158k.duckdb \
        --copies 5

`--scale-from` first builds `--db` as `--copies` copies of a database's images, captions and samples (new
image and sample ids; texts repeat across images, so scope `image` finds the same duplicates per copy).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BEFORE_COMMIT = "1ce5c959957ca0b16490dbf24325ff3c4153b59d"
IMAGE_ID_STRIDE = 10**9  # copy k's image ids are the original's + k * stride


def vm_hwm_mib() -> float:
    """This process's peak resident memory (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def module_at(commit: str, path: str, name: str) -> ModuleType:
    """`path` as it was at `commit`, imported as module `name`."""
    source = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout
    file = Path(tempfile.mkdtemp(prefix="curmem-")) / f"{name}.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    if hasattr(module, "INSTRUCTIONS_DIR"):  # export's instruction lists stay beside the real module
        module.INSTRUCTIONS_DIR = ROOT / "tasks" / "curation" / "instructions"
    return module


def run_side(step: str, side: str, db: Path, out_dir: Path, before_commit: str = BEFORE_COMMIT) -> dict[str, Any]:
    """One step by one side, in this process (called in a child process by `main`)."""
    sys.path.insert(0, str(ROOT))
    if side == "before":
        module = module_at(before_commit, f"tasks/curation/{step}.py", f"{step}_before")
    else:
        module = importlib.import_module(f"tasks.curation.{step}")
    baseline = vm_hwm_mib()
    started = time.perf_counter()
    if step == "dedup":
        stats = module.dedup(db, threshold=0.8, scope="image")
        detail = {"samples": stats.samples, "duplicates": stats.exact_duplicates + stats.near_duplicates}
    else:
        result = module.export(db, out_dir, "/synthetic", seed=0)
        detail = {"records": result.counts.get("llava_instruct")}
    return {"step": step, "side": side, "seconds": round(time.perf_counter() - started, 1),
            "vmhwm_before_step_mib": round(baseline), "vmhwm_mib": round(vm_hwm_mib()), **detail}


def scale_database(source: Path, target: Path, copies: int) -> None:
    """`target`: `copies` copies of `source`'s images, captions and samples under new ids (no duplicates rows)."""
    import duckdb

    shutil.copyfile(source, target)
    con = duckdb.connect(str(target))
    try:
        con.execute("DELETE FROM duplicates")
        for k in range(1, copies):
            shift = k * IMAGE_ID_STRIDE
            con.execute(f"INSERT INTO images SELECT * REPLACE (image_id + {shift} AS image_id) FROM images "
                        f"WHERE image_id < {IMAGE_ID_STRIDE}")
            con.execute(f"INSERT INTO captions SELECT * REPLACE (image_id + {shift} AS image_id, "
                        f"caption_id + {shift} AS caption_id) FROM captions WHERE image_id < {IMAGE_ID_STRIDE}")
            con.execute(f"INSERT INTO samples SELECT * REPLACE (image_id + {shift} AS image_id, "
                        f"sample_id || '-c{k}' AS sample_id) FROM samples WHERE image_id < {IMAGE_ID_STRIDE}")
        con.execute("CHECKPOINT")
    finally:
        con.close()


def same_exports(a: Path, b: Path) -> bool:
    """JSON files byte-identical and Parquet files holding the same rows."""
    import pyarrow.parquet as pq

    names = sorted(p.name for p in a.iterdir() if p.suffix in (".json", ".parquet") and p.name != "export_summary.json")
    for name in names:
        if name.endswith(".json") and (a / name).read_bytes() != (b / name).read_bytes():
            return False
        if name.endswith(".parquet") and not pq.read_table(a / name).equals(pq.read_table(b / name)):
            return False
    return bool(names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--sides", default="before,after")
    parser.add_argument("--steps", default="dedup,export")
    parser.add_argument("--scale-from", type=Path, default=None)
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--before-commit", default=BEFORE_COMMIT,
                        help="the commit whose dedup/export the before side runs (default: before the chunking)")
    parser.add_argument("--child", nargs=3, metavar=("STEP", "SIDE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        step, side, out = args.child
        print(json.dumps(run_side(step, side, args.db, Path(out), args.before_commit)))
        return
    if "before" in args.sides.split(",") and subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{args.before_commit}^{{commit}}"], cwd=ROOT,
            capture_output=True).returncode:
        parser.error(f"--before-commit {args.before_commit!r} is no commit of this repository")
    if args.scale_from:
        scale_database(args.scale_from, args.db, args.copies)
    work = Path(tempfile.mkdtemp(prefix="curmem-out-"))
    rows: list[dict[str, Any]] = []
    duplicates: dict[str, Any] = {}
    for step in args.steps.split(","):
        for side in args.sides.split(","):
            done = subprocess.run([sys.executable, __file__, "--db", str(args.db), "--child", step, side,
                                   str(work / side), "--before-commit", args.before_commit],
                                  check=True, capture_output=True, text=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
            if step == "dedup":
                import duckdb

                con = duckdb.connect(str(args.db), read_only=True)
                duplicates[side] = con.execute("SELECT sample_id, duplicate_of, method, round(similarity, 12) "
                                               "FROM duplicates ORDER BY 1").fetchall()
                con.close()
    summary: dict[str, Any] = {"db": str(args.db), "rows": rows}
    if len(duplicates) == 2:
        summary["same_duplicates"] = duplicates["before"] == duplicates["after"]
    if "export" in args.steps and (work / "before").exists() and (work / "after").exists():
        summary["same_exports"] = same_exports(work / "before", work / "after")
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
