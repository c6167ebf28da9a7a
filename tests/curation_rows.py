"""Row factories for the curation tests (validate, dedup, export, report): small, explicit inserts."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from PIL import Image

from schemas.tables import CaptionRow, ImageRow, RequestRow, ResponseRow, SampleRow
from tasks.store import insert_rows, stable_hash, write

T0 = datetime(2026, 1, 1)


def add_images(db: Path, coco_root: Path, image_ids: list[int], split: str = "train2017",
               captions: int = 2, make_files: bool = True) -> None:
    """Images (tiny JPEGs on disk when `make_files`) with `captions` captions each."""
    images, caps = [], []
    for image_id in image_ids:
        file_name = f"{image_id:012d}.jpg"
        if make_files:
            (coco_root / split).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (image_id % 255, 0, 0)).save(coco_root / split / file_name)
        images.append(ImageRow(image_id=image_id, split=split, file_name=file_name, width=8, height=8,
                               coco_root=str(coco_root)))
        caps += [CaptionRow(caption_id=image_id * 10 + k, image_id=image_id,
                            caption=f"A small red square number {image_id}, caption {k}.") for k in range(captions)]
    with write(db) as con:
        insert_rows(con, ImageRow, images)
        insert_rows(con, CaptionRow, caps)


def add_response(db: Path, *, image_id: int, sample_type: str, content: str | None,
                 output_format: str = "llava-text", finish_reason: str | None = "stop", status: str = "ok",
                 model: str = "test-model", cost_usd: float = 0.001, attempt: int = 1,
                 error: str | None = None) -> str:
    """A request and one response to it; returns the response id."""
    request_id = stable_hash("req", image_id, sample_type, content, output_format, model)
    response_id = stable_hash("resp", request_id, attempt)
    with write(db) as con:
        insert_rows(con, RequestRow, [RequestRow(
            request_id=request_id, image_id=image_id, sample_type=sample_type, prompt_version="v-test", model=model,
            output_format=output_format, messages=[], params={}, est_input_tokens=10, created_at=T0)])
        insert_rows(con, ResponseRow, [ResponseRow(
            response_id=response_id, request_id=request_id, attempt=attempt, status=status, http_status=200,
            content=content, finish_reason=finish_reason, prompt_tokens=100, completion_tokens=50,
            cost_usd=cost_usd, error=error, created_at=T0)])
    return response_id


def add_samples(db: Path, rows: list[tuple[str, int, str, str]], data: dict | None = None) -> None:
    """Samples from (sample_id, image_id, sample_type, text); created_at follows list order."""
    with write(db) as con:
        insert_rows(con, SampleRow, [
            SampleRow(sample_id=sid, request_id=f"req-{sid}", response_id=f"resp-{sid}", image_id=image_id,
                      sample_type=sample_type, prompt_version="v-test", model="test-model",
                      data=data or {"description": text}, text=text, created_at=T0 + timedelta(seconds=i))
            for i, (sid, image_id, sample_type, text) in enumerate(rows)
        ])
