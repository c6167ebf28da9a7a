"""docs/REPRODUCE.md runs as written: every `bash` command of the runbook, in order, on coco-mini with the simulator.

The only changes are the ones the runbook's last section lists, in `SIZES` and `STAND_INS` below: the paper's
sizes become coco-mini's, the 7B training config a tiny one, the COCO servers a local one, and the third-party
downloads of step 0 files written here in their layout (every text in them invented for this test).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tasks import store

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "REPRODUCE.md"
BIN = Path(sys.executable).parent
EVAL_STEP = "8."  # the heading of the step that needs `vistune eval` (issue 11)
# The paper's sizes -> coco-mini's (80 train images): the mix's counts, in `--mix` and as recipe overrides.
SIZES = {"58000": "12", "23000": "5", "77000": "16"}
RECIPE_SIZES = ["--set", "mix.conversation=12", "--set", "mix.detail_description=5",
                "--set", "mix.complex_reasoning=16", "--set", "coco.images=80"]
PAPER_CONFIG = "training/configs/llava_v1_7b.yaml"  # -> the tiny config of the same shape (STAND_INS)


def bash_commands(text: str) -> list[tuple[str, str]]:
    """(step heading, command) for every command of every ```bash block, continuation lines joined, in order."""
    commands: list[tuple[str, str]] = []
    heading = ""
    for block in re.finditer(r"^## ([^\n]*)$|^```bash\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        if block.group(1) is not None:
            heading = block.group(1)
            continue
        joined = re.sub(r"\\\n\s*", "", block.group(2))
        commands += [(heading, line.strip()) for line in joined.splitlines()
                     if line.strip() and not line.strip().startswith("#")]
    return commands


def test_the_runbook_has_every_step_as_a_command() -> None:
    commands = [c for _, c in bash_commands(DOC.read_text(encoding="utf-8"))]
    starts = [" ".join(shlex.split(c)[:3]) for c in commands]
    for needed in ("vistune coco download", "vistune ingest --coco", "vistune estimate --recipe",
                   "vistune generate --model", "vistune curate --out", "vistune run --recipe",
                   "python -m training", "vistune eval import-llava-bench", "vistune eval run"):
        assert any(s.startswith(needed) for s in starts), f"docs/REPRODUCE.md lost its `{needed}` step"
    assert any("--mode batch" in c for c in commands)
    assert sum(c.startswith("python -m training stage1") for c in commands) == 2  # CC-595K and LLaVA-Pretrain 558K
    assert "docs/REPRODUCE.md" in (REPO / "README.md").read_text(encoding="utf-8")  # the README links it


def test_the_estimate_table_is_what_the_command_computes() -> None:
    from tasks.recipes import load
    from tasks.recipes.estimate import estimate_recipe, markdown_table

    text = DOC.read_text(encoding="utf-8")
    shown = re.search(r"<!-- estimate-table:start[^\n]*-->\n(.*?)<!-- estimate-table:end -->", text, re.DOTALL)
    assert shown, "docs/REPRODUCE.md lost its estimate table markers"
    expected = markdown_table(estimate_recipe(load("llava-instruct-158k"), db=None))
    assert shown.group(1) == expected, f"paste this between the estimate-table markers:\n{expected}"


# ---------------------------------------------------------------- the stand-ins of the downloads
class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


@dataclass
class Layout:
    """The user's folder (cwd of every command) and the stand-ins the commands get."""

    cwd: Path
    archives: str  # base URL of the local server holding the COCO zips
    tiny_config: Path
    sim_url: str


def zip_folder(zip_path: Path, files: dict[str, Path | bytes]) -> None:
    """A zip of `files` (member name -> file or bytes) with a `sha256sum` sidecar, as a download server has."""
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(name, data if isinstance(data, bytes) else data.read_bytes())
    digest = hashlib.sha256(zip_path.read_bytes()).hexdigest()
    zip_path.with_name(zip_path.name + ".sha256").write_text(f"{digest}  {zip_path.name}\n")


def coco_archives(coco_mini: Path, folder: Path) -> None:
    """coco-mini as the 2014 release: its train2017 as train2014, its val2017 as val2014 (same pictures, as COCO)."""
    folder.mkdir(parents=True)
    notes = {}
    for kind in ("captions", "instances"):
        for new, old in (("train2014", "train2017"), ("val2014", "val2017")):
            notes[f"annotations/{kind}_{new}.json"] = coco_mini / "annotations" / f"{kind}_{old}.json"
    zip_folder(folder / "annotations_trainval2014.zip", notes)
    for new, old in (("train2014", "train2017"), ("val2014", "val2017")):
        zip_folder(folder / f"{new}.zip", {f"{new}/{p.name}": p for p in sorted((coco_mini / old).glob("*.jpg"))})


def _captions(coco_mini: Path, split: str) -> dict[str, list[str]]:
    data = json.loads((coco_mini / "annotations" / f"captions_{split}.json").read_text())
    names = {img["id"]: img["file_name"] for img in data["images"]}
    out: dict[str, list[str]] = {}
    for ann in data["annotations"]:
        out.setdefault(names[ann["image_id"]], []).append(ann["caption"].strip())
    return out


def stage1_files(coco_mini: Path, data: Path, n: int = 12) -> None:
    """CC-595K's and LLaVA-Pretrain 558K's layouts, with coco-mini pictures and captions as the pairs."""
    captions = sorted(_captions(coco_mini, "train2017").items())[:n]
    for folder, json_name, image_name in (
            ("LLaVA-CC3M-Pretrain-595K", "chat.json", "GCC_train_{:09d}.jpg"),
            ("LLaVA-Pretrain", "blip_laion_cc_sbu_558k.json", "00000/{:09d}.jpg")):
        records = []
        for i, (file_name, texts) in enumerate(captions):
            image = image_name.format(i)
            target = data / folder / "images" / image
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(coco_mini / "train2017" / file_name, target)
            records.append({"id": f"pair-{i}", "image": image, "conversations": [
                {"from": "human", "value": "<image>\nSay briefly what the picture shows."},
                {"from": "gpt", "value": texts[0]}]})
        (data / folder / json_name).write_text(json.dumps(records))


def llava_files(coco_mini: Path, llava: Path) -> None:
    """LLaVA's repository as far as the runbook reads it: a prompt set and the LLaVA-Bench (COCO) files."""
    shutil.copytree(REPO / "tests" / "fixtures" / "llava_prompts", llava / "playground" / "data" / "prompts")
    instances = json.loads((coco_mini / "annotations" / "instances_val2017.json").read_text())
    sizes = {img["file_name"]: (img["width"], img["height"], img["id"]) for img in instances["images"]}
    names = {c["id"]: c["name"] for c in instances["categories"]}
    captions = sorted(_captions(coco_mini, "val2017").items())[:2]
    questions, contexts, answers = [], [], []
    for i, (file_name, texts) in enumerate(captions):
        width, height, image_id = sizes[file_name]
        boxes = [{"category": names[a["category_id"]],
                  "bbox": [round(a["bbox"][0] / width, 3), round(a["bbox"][1] / height, 3),
                           round((a["bbox"][0] + a["bbox"][2]) / width, 3),
                           round((a["bbox"][1] + a["bbox"][3]) / height, 3)]}
                 for a in instances["annotations"] if a["image_id"] == image_id]
        contexts.append({"id": image_id, "image": file_name, "captions": texts, "instances": boxes})
        for j, (category, text) in enumerate((("conv", "What is in the picture?"),
                                              ("detail", "Describe the scene in detail."),
                                              ("complex", "What might happen next here, and why?"))):
            qid = i * 3 + j
            questions.append({"question_id": qid, "image": file_name, "text": text, "category": category})
            answers.append({"question_id": qid, "text": f"{texts[0]} That is what a careful look shows."})
    bench = llava / "playground" / "data" / "coco2014_val_qa_eval"
    table = llava / "llava" / "eval" / "table"
    for folder, name, rows in ((bench, "qa90_questions.jsonl", questions), (table, "caps_boxes_coco2014_val_80.jsonl",
                                                                             contexts),
                               (bench, "qa90_gpt4_answer.jsonl", answers)):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def layout(coco_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Layout]:
    """A user's folder after step 0, a local COCO server, the simulator and the tiny training config."""
    from tests.sim import SimConfig, start_simulator
    from training.tiny import build_tiny_base_models, write_tiny_config

    root = tmp_path_factory.mktemp("reproduce")
    cwd = root / "work"
    coco_archives(coco_mini, root / "server")
    stage1_files(coco_mini, cwd / "data")
    llava_files(coco_mini, cwd / "data" / "LLaVA")
    texts = [t for group in _captions(coco_mini, "train2017").values() for t in group]
    vision, llm = build_tiny_base_models(root / "tiny", texts=texts)
    # The paper's config with the model sizes changed: same projector and stages, output in the same folder.
    tiny = write_tiny_config(root / "tiny" / "llava_v1_tiny.yaml", vision, llm, projector="linear",
                             image_root="data/coco", output_dir="runs/llava-v1-7b")
    handler = functools.partial(_Quiet, directory=str(root / "server"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        with start_simulator(SimConfig(seed=7)) as sim:
            yield Layout(cwd, f"http://127.0.0.1:{server.server_address[1]}", tiny, sim.base_url)
    finally:
        server.shutdown()
        server.server_close()


def stand_in(command: str, layout: Layout) -> list[str]:
    """The command as the test runs it: sizes and stand-ins substituted (`SIZES`, `STAND_INS`), as argv."""
    for paper, mini in SIZES.items():
        command = command.replace(f"={paper}", f"={mini}")
    argv = shlex.split(command.replace(PAPER_CONFIG, str(layout.tiny_config)))
    if argv[:3] == ["vistune", "coco", "download"]:
        split = argv[argv.index("--split") + 1]
        argv += ["--url", f"{layout.archives}/annotations_trainval{split[-4:]}.zip"]
        if "--images" in argv:
            argv += ["--images-url", f"{layout.archives}/{split}.zip"]
    if argv[:3] == ["vistune", "run", "--recipe"]:
        argv += RECIPE_SIZES
    if argv[0] == "python":
        argv[0] = sys.executable
    elif argv[0] == "vistune":
        argv[0] = str(BIN / "vistune")
    return argv


STAND_INS = ("the COCO archive URLs -> a local server with coco-mini zips (`--url`, `--images-url`)",
             f"{PAPER_CONFIG} -> a tiny config of the same shape", "`vistune run --recipe` -> + RECIPE_SIZES")


def run(argv: list[str], layout: Layout) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VISTUNE_DB", "PREFECT_API_URL")}
    env.update(OPENAI_BASE_URL=layout.sim_url, OPENAI_API_KEY="sk-reproduce-test", COLUMNS="200",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return subprocess.run(argv, cwd=layout.cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.coco_mini
@pytest.mark.timeout(1500)
def test_every_runbook_command_runs_on_coco_mini(layout: Layout) -> None:
    from flows.cli import get_app

    has_eval = any(group.name == "eval" for group in get_app().registered_groups)  # `vistune eval` (issue 11)
    outputs: dict[str, str] = {}
    skipped: list[str] = []
    for heading, command in bash_commands(DOC.read_text(encoding="utf-8")):
        if heading.startswith(EVAL_STEP) and not has_eval:
            skipped.append(command)
            continue
        done = run(stand_in(command, layout), layout)
        assert done.returncode == 0, (f"`{command}` (step {heading}) failed:\n{done.stdout[-3000:]}\n"
                                      f"{done.stderr[-3000:]}")
        outputs[command] = done.stdout + done.stderr
    cwd = layout.cwd

    def printed(start: str) -> str:
        return next(text for command, text in outputs.items() if command.startswith(start))

    # each step prints what the runbook says it prints
    assert re.search(r"annotations_trainval2014\.zip: downloaded [\d,]+ bytes; checksum sha256:\w+",
                     printed("vistune coco download --split train2014")), "download line"
    assert "ingest train2014" in printed("vistune ingest")
    assert "generate: gpt-4 (batch, llava-text)" in printed("vistune generate")
    assert "Sample types vs the target" in (cwd / "data" / "export" / "report.md").read_text()
    assert re.search(r"preflight stage1: \d+ records in .*chat\.json", printed("python -m training check"))
    assert re.search(r"ok: 12\s+bad: 0", printed("python -m training check"))
    # 1-2: the 2014 annotations and pictures came down (checksummed) and every image is in the store
    assert (cwd / "data" / "coco" / "annotations" / "captions_train2014.json").exists()
    assert len(list((cwd / "data" / "coco" / "train2014").glob("*.jpg"))) == 80
    assert store.table_counts(cwd / "data" / "vistune.duckdb")["images"] == 80
    # 3: the recipe's estimate priced every model of prices.toml
    from tasks.llm.estimate import priced_models

    estimate = next(text for command, text in outputs.items() if "estimate --recipe" in command)
    assert all(f" {model} " in estimate for model in priced_models()) and "assumptions:" in estimate
    # 4: batch mode, the mix's exact counts; 5: the report sets them against the target
    rows = store.query("SELECT sample_type, count(DISTINCT image_id) AS n, min(r.mode) AS mode FROM requests q "
                       "JOIN responses r USING (request_id) WHERE q.sample_type NOT LIKE 'eval:%' GROUP BY 1",
                       path=cwd / "data" / "vistune.duckdb")
    assert {r["sample_type"]: r["n"] for r in rows} == {"conversation": 12, "detail_description": 5,
                                                        "complex_reasoning": 16}
    assert {r["mode"] for r in rows} == {"batch"}
    report = (cwd / "data" / "export" / "report.md").read_text()
    assert re.search(r"\| conversation \| 12 \| \d+ \|", report), report
    # the recipe asks for what step 4's flags asked for: `vistune run --recipe` found nothing new to send
    recipe_run = next(text for command, text in outputs.items() if command.startswith("vistune run --recipe"))
    assert "nothing new to send" in recipe_run
    # 6-7: both stages left loadable checkpoints
    for stage in ("stage1", "stage2"):
        assert (cwd / "runs" / "llava-v1-7b" / stage / "final" / "config.json").exists()
    # 8: the judged report, or the step skipped because `vistune eval` (issue 11) is not in this checkout
    if has_eval:
        assert re.search(r"eval set llava-bench: 2 images, 6 questions, 6 reference answers",
                         printed("vistune eval import-llava-bench"))
        assert "relative score" in printed("vistune eval run") and "| all |" in printed("vistune eval run")
    else:
        pytest.skip(f"step 8 not run: `vistune eval` (issue 11) is not in this checkout ({len(skipped)} commands)")
