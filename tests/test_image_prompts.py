"""Image-grounded prompts (issue 12, item 4): references, encoding, tile-formula tokens, simulator, end to end.

The core runs on synthetic images written by the tests; the coco-mini tests skip without ../shared.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import orjson
import pytest
from PIL import Image
from typer.testing import CliRunner

from schemas.generation import GenerateConfig
from schemas.tables import CaptionRow, ImageRow, ObjectRow
from tasks import store
from tasks.curation.validate import validate_pending
from tasks.llm import client as llm_client
from tasks.llm import pricing
from tasks.llm.engine import run_requests_sync
from tasks.llm.estimate import estimate
from tasks.prompting import images
from tasks.prompting.images import DATA_URL_PREFIX, IMAGE_REF, ImageUnavailable, materialize
from tasks.prompting.plan import plan_requests
from tasks.prompting.prompts import (
    ImageContext,
    PromptFileError,
    build_messages,
    clear_caches,
    load_contexts,
    load_template,
)
from tasks.prompting.tokens import count_message_tokens, image_part_tokens
from tests.conftest import REPO
from tests.sim import SimConfig, Simulator, start_simulator
from tests.sim import tokens as sim_tokens
from tests.sim.core import BadRequest

IMAGE_SET = REPO / "tests" / "fixtures" / "image_prompts"
TYPES = ["conversation", "detail_description"]


def _write_image(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    # A gradient with a seed-dependent colour: different seeds give different bytes.
    w, h = size
    im = Image.new("RGB", size)
    im.putdata([((x * 255 // w + seed * 40) % 256, (y * 255 // h) % 256, (seed * 97) % 256)
                for y in range(h) for x in range(w)])
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, "JPEG", quality=90)
    return path


def _add_images(db: Path, root: Path, sizes: dict[int, tuple[int, int]], *, write: bool = True) -> None:
    rows, captions, objects = [], [], []
    for image_id, (w, h) in sizes.items():
        name = f"{image_id:012d}.jpg"
        if write:
            _write_image(root / "val2017" / name, (w, h), seed=image_id)
        rows.append(ImageRow(image_id=image_id, split="val2017", file_name=name, width=w, height=h,
                             coco_root=str(root)))
        captions += [CaptionRow(caption_id=image_id * 10 + k, image_id=image_id,
                                caption=f"A striped kite number {k} floats over a green field.") for k in range(3)]
        objects.append(ObjectRow(object_id=image_id * 10, image_id=image_id, category="kite",
                                 x1=0.2, y1=0.1, x2=0.6, y2=0.5, area=900.0, iscrowd=False))
    store.ensure_schema(db)
    with store.write(db) as con:
        store.insert_rows(con, ImageRow, rows)
        store.insert_rows(con, CaptionRow, captions)
        store.insert_rows(con, ObjectRow, objects)


def _decode(url: str) -> Image.Image:
    assert url.startswith(DATA_URL_PREFIX)
    return Image.open(io.BytesIO(base64.b64decode(url[len(DATA_URL_PREFIX):])))


def _ctx(image_id: int, file: Path | None, size: tuple[int, int] = (640, 480)) -> ImageContext:
    return ImageContext(image_id, size[0], size[1], ("A kite over a field.",), (), str(file) if file else None)


# ---------------------------------------------------------------- token arithmetic
@pytest.mark.parametrize(("model", "size", "detail", "tokens"), [
    ("gpt-4o", (4000, 3000), "low", 85),
    ("gpt-4o", (640, 426), "high", 85 + 170 * 2),  # 2x1 tiles, no resize
    ("gpt-4o", (2048, 4096), "high", 85 + 170 * 6),  # -> 1024x2048 -> 768x1536: 2x3 tiles (OpenAI's example)
    ("gpt-4o", (1024, 1024), "auto", 85 + 170 * 4),  # auto counts as high: 768x768, 2x2 tiles
    ("gpt-4o-mini", (512, 512), "low", 2833),
    ("gpt-4o-mini", (1024, 1024), "high", 2833 + 5667 * 4),
    ("gpt-4o-2024-08-06", (300, 200), "high", 85 + 170),  # a dated name uses its family's figures
    ("some-local-vlm", (300, 200), "high", 85 + 170),  # no price entry: gpt-4o's figures
])
def test_image_tokens_follow_the_tile_formula(model: str, size: tuple[int, int], detail: str, tokens: int) -> None:
    assert pricing.image_tokens(model, *size, detail) == tokens
    assert sim_tokens.image_tokens(model, *size, detail) == tokens  # the simulator's own implementation agrees


def test_image_size_fits_the_provider_limits() -> None:
    assert pricing.image_size(4000, 3000, "low") == (512, 384)
    assert pricing.image_size(300, 200, "low") == (300, 200)  # never enlarged
    assert pricing.image_size(4096, 2048, "high") == (1536, 768)
    assert pricing.image_size(6000, 1000, "high") == (2048, 341)  # the 2048 fit binds first
    assert pricing.image_size(640, 480, "auto") == (640, 480)
    for size in [(4000, 3000), (777, 1999), (5000, 100)]:
        for detail in pricing.DETAILS:
            once = pricing.image_size(*size, detail)
            assert pricing.image_size(*once, detail) == once  # counting the sent image gives the same size
    with pytest.raises(ValueError, match="unknown image detail"):
        pricing.image_size(10, 10, "medium")


# ---------------------------------------------------------------- manifest
def _image_set(tmp_path: Path, manifest: str) -> Path:
    folder = tmp_path / "set"
    folder.mkdir()
    for name in TYPES:
        (folder / name).symlink_to(IMAGE_SET / name)
    (folder / "prompt_set.toml").write_text(manifest)
    return folder


def test_manifest_reads_image_and_detail(tmp_path: Path) -> None:
    low = load_template("conversation", IMAGE_SET)
    high = load_template("detail_description", IMAGE_SET)
    assert (low.context.fields, low.context.detail) == (("captions", "image"), "low")
    assert (high.context.fields, high.context.detail) == (("captions", "boxes", "image"), "high")
    listed = load_template("conversation", _image_set(tmp_path, 'context.conversation = ["image", "captions"]\n'))
    assert (listed.context.fields, listed.context.detail) == (("captions", "image"), "low")
    assert listed.version == low.version  # the same settings, however written


@pytest.mark.parametrize(("manifest", "message"), [
    ("[context.conversation]\ndetail = 'high'\n", "needs image = true"),
    ("[context.conversation]\ncaptions = false\nimage = true\n", "captions = false"),
    ("[context.conversation]\nimage = true\ndetail = 'medium'\n", "context.conversation.detail: Input should be"),
])
def test_manifest_image_errors_name_the_key(tmp_path: Path, manifest: str, message: str) -> None:
    with pytest.raises(PromptFileError, match=message):
        load_template("conversation", _image_set(tmp_path, manifest))
    clear_caches()


def test_detail_is_part_of_the_prompt_version(tmp_path: Path) -> None:
    one = tmp_path / "one"
    two = tmp_path / "two"
    for folder, detail in ((one, "low"), (two, "high")):
        folder.mkdir()
        (folder / "conversation").symlink_to(IMAGE_SET / "conversation")
        (folder / "prompt_set.toml").write_text(f"[context.conversation]\nimage = true\ndetail = '{detail}'\n")
    assert load_template("conversation", one).version != load_template("conversation", two).version


# ---------------------------------------------------------------- references and encoding
def test_last_message_carries_a_reference_with_the_content_hash(tmp_path: Path) -> None:
    file = _write_image(tmp_path / "a.jpg", (1200, 900), seed=1)
    messages, _ = build_messages(_ctx(5, file), "conversation", "structured", IMAGE_SET)
    assert all(isinstance(m["content"], str) for m in messages[:-1])  # the shared prefix stays text
    text, part = messages[-1]["content"]
    assert text == {"type": "text", "text": "A kite over a field."}
    ref = part[IMAGE_REF]
    assert part["type"] == IMAGE_REF
    assert (ref["image_id"], ref["path"], ref["detail"]) == (5, str(file), "low")
    assert (ref["width"], ref["height"]) == (512, 384)
    import hashlib

    assert ref["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert len(json.dumps(messages[-1])) < 600  # a reference, not the pixels


@pytest.mark.parametrize(("size", "detail", "sent"), [
    ((3000, 1000), "high", (2048, 683)),
    ((3000, 1000), "low", (512, 171)),
    ((1600, 1200), "high", (1024, 768)),
    ((400, 300), "high", (400, 300)),
])
def test_materialised_part_is_a_resized_jpeg_data_url(
    tmp_path: Path, size: tuple[int, int], detail: str, sent: tuple[int, int]
) -> None:
    file = _write_image(tmp_path / "big.png", size)  # any format Pillow reads; always sent as JPEG
    ref = images.image_ref(7, file, detail)
    part = materialize(ref)
    assert part["type"] == "image_url" and part["image_url"]["detail"] == detail
    with _decode(part["image_url"]["url"]) as im:
        assert im.format == "JPEG" and im.size == sent
        assert max(im.size) <= 2048 and (detail != "low" or max(im.size) <= 512)
        assert detail == "low" or min(im.size) <= 768
    assert image_part_tokens(ref, "gpt-4o") == image_part_tokens(part, "gpt-4o") == pricing.image_tokens(
        "gpt-4o", *size, detail)


def test_api_messages_materialise_references_and_leave_text_alone(tmp_path: Path) -> None:
    text_only = [{"role": "user", "content": "hello"}]
    assert llm_client.api_messages(text_only) is text_only
    file = _write_image(tmp_path / "a.jpg", (300, 200))
    messages, _ = build_messages(_ctx(3, file), "conversation", "llava-text", IMAGE_SET)
    sent = llm_client.api_messages(messages)
    assert sent[-1]["content"][1]["type"] == "image_url"
    assert messages[-1]["content"][1]["type"] == IMAGE_REF  # the stored messages are not touched
    assert sent[:-1] == messages[:-1]


def test_missing_changed_or_broken_image_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageUnavailable, match=rf"image 9: image file not found \({missing}\)"):
        build_messages(_ctx(9, missing), "conversation", "structured", IMAGE_SET)
    with pytest.raises(ImageUnavailable, match="image 9: no image file is known"):
        build_messages(_ctx(9, None), "conversation", "structured", IMAGE_SET)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(ImageUnavailable, match=rf"image 9: image file unreadable.*{broken.name}"):
        images.image_ref(9, broken, "low")
    file = _write_image(tmp_path / "a.jpg", (300, 200), seed=1)
    ref = images.image_ref(9, file, "low")
    _write_image(file, (300, 200), seed=2)
    with pytest.raises(ImageUnavailable, match=rf"image 9: image file changed since planning.*{file}"):
        materialize(ref)
    file.unlink()
    with pytest.raises(ImageUnavailable, match=rf"image 9: image file not found \({file}\)"):
        materialize(ref)


# ---------------------------------------------------------------- plan
def test_request_id_changes_when_the_image_bytes_change(db_path: Path, tmp_path: Path) -> None:
    _add_images(db_path, tmp_path / "coco", {1: (640, 480), 2: (500, 375)})
    plan = plan_requests(db_path, sample_types=TYPES, model="gpt-4o", prompt_set=IMAGE_SET, dry_run=True)
    again = plan_requests(db_path, sample_types=TYPES, model="gpt-4o", prompt_set=IMAGE_SET, dry_run=True)
    assert plan.request_ids == again.request_ids and plan.pending == 4
    file = tmp_path / "coco" / "val2017" / f"{1:012d}.jpg"
    _write_image(file, (640, 480), seed=5)
    changed = plan_requests(db_path, sample_types=TYPES, model="gpt-4o", prompt_set=IMAGE_SET, dry_run=True)
    assert changed.request_ids[:2] != plan.request_ids[:2]  # image 1's two requests
    assert changed.request_ids[2:] == plan.request_ids[2:]  # image 2 untouched


def test_plan_counts_image_tokens_and_skips_missing_images(db_path: Path, tmp_path: Path) -> None:
    root = tmp_path / "coco"
    _add_images(db_path, root, {1: (640, 480), 2: (1600, 1200)})
    _add_images(db_path, root, {3: (640, 480)}, write=False)  # in the table, no file
    model = "gpt-4o-mini"
    plan = plan_requests(db_path, sample_types=TYPES, model=model, prompt_set=IMAGE_SET)
    assert plan.pending == 4 and plan.images_unavailable == 1
    assert plan.unavailable == [f"image 3: image file not found ({root / 'val2017' / '000000000003.jpg'})"]
    rows = store.query("SELECT image_id, sample_type, messages, est_input_tokens FROM requests ORDER BY 1, 2",
                       path=db_path)
    expected_image = {("conversation", 1): 2833, ("conversation", 2): 2833,  # low detail: base only
                      ("detail_description", 1): 2833 + 5667 * 2,  # 640x480: 2x1 tiles
                      ("detail_description", 2): 2833 + 5667 * 4}  # 1600x1200 -> 1024x768: 2x2 tiles
    for row in rows:
        messages = json.loads(row["messages"]) if isinstance(row["messages"], str) else row["messages"]
        assert "base64" not in json.dumps(messages)
        text_only = [*messages[:-1], {"role": "user", "content": messages[-1]["content"][0]["text"]}]
        image = expected_image[(row["sample_type"], row["image_id"])]
        assert row["est_input_tokens"] == count_message_tokens(text_only, model) + image
    assert plan.est_input_tokens == sum(r["est_input_tokens"] for r in rows)
    cost = estimate(plan, model, db_path)
    assert (cost.input_tokens, cost.images_unavailable) == (plan.est_input_tokens, 1)
    assert cost.online_usd == pytest.approx(pricing.cost_usd(model, plan.est_input_tokens, cost.output_tokens))


# ---------------------------------------------------------------- simulator
def test_simulator_counts_image_parts_with_the_tile_formula(tmp_path: Path) -> None:
    sim = Simulator(SimConfig())
    try:
        file = _write_image(tmp_path / "a.jpg", (1600, 1200))
        url = materialize(images.image_ref(1, file, "high"))["image_url"]["url"]

        def body(parts: list) -> bytes:
            return orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": parts}]})

        text = {"type": "text", "text": "A kite over a field."}
        plain = sim.parse(body([text])).prompt_tokens
        for detail, image in (("high", 2833 + 5667 * 4), ("low", 2833)):
            part = {"type": "image_url", "image_url": {"url": url, "detail": detail}}
            assert sim.parse(body([text, part])).prompt_tokens == plain + image
        for bad, message in (
            ({"type": "image_ref", "image_ref": {}}, "invalid content part"),  # never materialised
            ({"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}}, "invalid image"),
            ({"type": "image_url", "image_url": {"url": url, "detail": "medium"}}, "detail must be"),
        ):
            with pytest.raises(BadRequest, match=message):
                sim.parse(body([text, bad]))
    finally:
        sim.close()


# ---------------------------------------------------------------- end to end
def test_plan_send_validate_against_the_simulator(db_path: Path, tmp_path: Path) -> None:
    root = tmp_path / "coco"
    _add_images(db_path, root, {1: (640, 480), 2: (333, 500), 3: (800, 600)})
    model = "gpt-4o-mini"
    plan = plan_requests(db_path, sample_types=TYPES, model=model, prompt_set=IMAGE_SET)
    assert plan.pending == 6
    (root / "val2017" / f"{3:012d}.jpg").unlink()  # gone after planning: its requests fail alone
    with start_simulator(SimConfig(seed=2)) as sim:
        config = GenerateConfig(base_url=sim.base_url, api_key="sk-test", concurrency=4, timeout=5.0,
                                backoff_base_s=0.05, backoff_max_s=0.2, flush_interval_s=0.2, model=model)
        stats = run_requests_sync(plan.request_ids, db_path=db_path, config=config)
        served = {r.client_request_id: r for r in list(sim.log) if r.path.endswith("/chat/completions")}
    assert (stats.done, stats.failed) == (4, 2)
    rows = store.query(
        "SELECT q.request_id, q.image_id, q.est_input_tokens, r.status, r.error, r.prompt_tokens FROM requests q "
        "JOIN responses r USING (request_id)", path=db_path)
    for row in rows:
        if row["image_id"] == 3:
            assert row["status"] == "client_error"
            assert "image 3: image file not found" in row["error"] and "000000000003.jpg" in row["error"]
            assert row["request_id"] not in served  # nothing was sent for it
            continue
        assert row["status"] == "ok"
        # the simulator counted the image with the tile formula, as the plan did (text counted alike offline)
        assert served[row["request_id"]].prompt_tokens == row["prompt_tokens"]
        assert abs(row["prompt_tokens"] - row["est_input_tokens"]) <= 10
    result = validate_pending(db_path)
    assert (result.checked, result.samples) == (4, 4), result.reject_codes


# ---------------------------------------------------------------- vistune prompts show
def _show(db: Path, image_id: int, *extra: str) -> str:
    from flows.cli import get_app

    args = ["prompts", "show", "--image-id", str(image_id), "--type", "detail_description",
            "--prompt-set", str(IMAGE_SET), "--db", str(db), "--model", "gpt-4o", *extra]
    result = CliRunner().invoke(get_app(), args)
    assert result.exit_code == 0, result.output
    return result.output


def test_prompts_show_abbreviates_the_image_and_counts_it(db_path: Path, tmp_path: Path) -> None:
    _add_images(db_path, tmp_path / "coco", {1: (1600, 1200)})
    out = _show(db_path, 1)
    assert "[image 1 · detail high · sent at 1024x768" in out and f"· {85 + 170 * 4} tokens ·" in out
    assert "data:image/jpeg;base64,/9j/" in out and "base64 chars]" in out
    assert len(out) < 10_000  # abbreviated
    payload = json.loads(_show(db_path, 1, "--json"))
    assert payload[-1]["content"][1]["image_url"]["url"].startswith(DATA_URL_PREFIX)


# ---------------------------------------------------------------- coco-mini
def test_coco_mini_image_prompts(coco_mini: Path, db_path: Path) -> None:
    from tasks.ingest.coco import ingest

    ingest(coco_mini, "val2017", db_path)
    with store.read(db_path) as con:
        contexts = load_contexts(con, None)
    assert contexts
    for ctx in list(contexts.values())[:3]:
        assert ctx.file and Path(ctx.file).is_file()
        messages, _ = build_messages(ctx, "detail_description", "structured", IMAGE_SET)
        ref = messages[-1]["content"][1]
        part = materialize(ref)
        with _decode(part["image_url"]["url"]) as im:
            assert im.size == pricing.image_size(ctx.width, ctx.height, "high")  # COCO's size is the file's
        assert image_part_tokens(ref, "gpt-4o") == pricing.image_tokens("gpt-4o", ctx.width, ctx.height, "high")
    out = _show(db_path, next(iter(contexts)))
    assert "[image " in out and "base64 chars]" in out
