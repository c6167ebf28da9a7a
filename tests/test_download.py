"""`vistune coco download` against a local HTTP server on 127.0.0.1: ranges, cut-offs, checksums, unzip."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from flows.cli import get_app
from tasks.ingest.coco import ingest
from tasks.ingest.download import (
    IMAGES_BASE_URL,
    OFFICIAL_ARCHIVES,
    Checksum,
    ChecksumError,
    DownloadError,
    annotation_files,
    download_annotations,
    download_images,
    extract_images,
    image_archive,
    split_year,
)

ZIP_NAME = "annotations_trainval2017.zip"


class FileServer(ThreadingHTTPServer):
    """Serves `files` by path; can cut off responses and ignore Range, and logs every request."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.cut_after: list[int] = []  # per upcoming GET: send only this many body bytes, then close
        self.ignore_range = False
        self.log: list[tuple[str, str | None]] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        range_header = self.headers.get("Range")
        self.server.log.append((self.path, range_header))
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if range_header and not self.server.ignore_range:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if self.server.cut_after:
            payload = payload[: self.server.cut_after.pop(0)]
            self.close_connection = True
        self.wfile.write(payload)


@pytest.fixture
def server() -> Iterator[FileServer]:
    srv = FileServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def make_archive() -> tuple[bytes, dict[str, bytes]]:
    """A zip laid out like the official one, with more files than a split needs."""
    contents = {}
    for kind in ("captions", "instances", "person_keypoints"):
        for split in ("train2017", "val2017"):
            # padding makes the archive big enough to cut a transfer in the middle
            payload = {"kind": kind, "split": split, "images": [{"id": i, "pad": "x" * 40} for i in range(300)]}
            contents[f"annotations/{kind}_{split}.json"] = json.dumps(payload).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in contents.items():
            zf.writestr(name, data)
    return buffer.getvalue(), contents


@pytest.fixture
def archive(server: FileServer) -> tuple[str, bytes, dict[str, bytes]]:
    data, contents = make_archive()
    server.files[f"/{ZIP_NAME}"] = data
    return f"{server.base}/{ZIP_NAME}", data, contents


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_extracted(dest: Path, contents: dict[str, bytes], split: str = "val2017") -> None:
    got = sorted(p.name for p in (dest / "annotations").iterdir())
    assert got == sorted(annotation_files(split))
    for name in annotation_files(split):
        assert (dest / "annotations" / name).read_bytes() == contents[f"annotations/{name}"]


def test_download_verifies_and_extracts_only_the_split_files(tmp_path: Path, archive, server: FileServer) -> None:
    url, data, contents = archive
    result = download_annotations("val2017", tmp_path, url=url, checksum=f"sha256:{sha256(data)}", progress=False)
    assert result.archive == tmp_path / ZIP_NAME and result.archive.read_bytes() == data
    assert result.downloaded_bytes == len(data)
    assert result.checksum == f"sha256:{sha256(data)} (given)"
    assert_extracted(tmp_path, contents)
    assert (tmp_path / f"{ZIP_NAME}.sha256").read_text() == f"{sha256(data)}  {ZIP_NAME}\n"
    assert not (tmp_path / f"{ZIP_NAME}.part").exists()
    # a second split from the same archive reuses it: no new request for the zip
    requests_before = len(server.log)
    again = download_annotations("train2017", tmp_path, url=url, progress=False)
    assert again.downloaded_bytes == 0 and len(server.log) == requests_before
    assert again.checksum == f"sha256:{sha256(data)} (local sidecar)"
    assert (tmp_path / "annotations" / "captions_train2017.json").read_bytes() == contents[
        "annotations/captions_train2017.json"]


def test_rerun_resumes_a_cut_off_transfer_with_a_range_request(tmp_path: Path, archive, server: FileServer) -> None:
    url, data, contents = archive
    cut = len(data) // 3
    server.cut_after = [cut]
    with pytest.raises(DownloadError, match="rerun to resume"):
        download_annotations("val2017", tmp_path, url=url, checksum=sha256(data), retries=0, progress=False)
    part = tmp_path / f"{ZIP_NAME}.part"
    assert part.stat().st_size == cut
    assert not (tmp_path / "annotations").exists()
    result = download_annotations("val2017", tmp_path, url=url, checksum=sha256(data), retries=0, progress=False)
    assert server.log[-1] == (f"/{ZIP_NAME}", f"bytes={cut}-")
    assert result.downloaded_bytes == len(data) - cut
    assert result.archive.read_bytes() == data
    assert_extracted(tmp_path, contents)


def test_a_dropped_connection_is_retried_from_where_it_stopped(tmp_path: Path, archive, server: FileServer) -> None:
    url, data, contents = archive
    server.cut_after = [1000, 5000]
    result = download_annotations("val2017", tmp_path, url=url, checksum=sha256(data), retries=2, retry_wait_s=0,
                                  progress=False)
    zip_requests = [r for p, r in server.log if p == f"/{ZIP_NAME}"]
    assert zip_requests == [None, "bytes=1000-", "bytes=6000-"]
    assert result.archive.read_bytes() == data
    assert_extracted(tmp_path, contents)


def test_checksum_mismatch_deletes_the_download_and_says_what_differs(tmp_path: Path, archive) -> None:
    url, data, _ = archive
    wrong = "0" * 64
    with pytest.raises(ChecksumError, match=f"sha256 of the download is {sha256(data)}, expected {wrong}"):
        download_annotations("val2017", tmp_path, url=url, checksum=wrong, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_server_sidecar_checksum_is_used_and_enforced(tmp_path: Path, archive, server: FileServer) -> None:
    url, data, contents = archive
    server.files[f"/{ZIP_NAME}.sha256"] = f"{sha256(data)}  {ZIP_NAME}\n".encode()
    result = download_annotations("val2017", tmp_path / "good", url=url, progress=False)
    assert result.checksum == f"sha256:{sha256(data)} (server sidecar)"
    assert_extracted(tmp_path / "good", contents)
    server.files[f"/{ZIP_NAME}.sha256"] = f"{'ab' * 32}  {ZIP_NAME}\n".encode()
    with pytest.raises(ChecksumError, match="expected abab"):
        download_annotations("val2017", tmp_path / "bad", url=url, progress=False)


def test_without_any_checksum_the_download_is_reported_unverified(tmp_path: Path, archive) -> None:
    url, _, contents = archive
    result = download_annotations("val2017", tmp_path, url=url, progress=False)
    assert result.checksum == "unverified"
    assert_extracted(tmp_path, contents)


def test_a_corrupted_local_archive_is_fetched_again(tmp_path: Path, archive, server: FileServer) -> None:
    url, data, contents = archive
    download_annotations("val2017", tmp_path, url=url, progress=False)
    (tmp_path / ZIP_NAME).write_bytes(data[:-10] + b"corrupted!")
    result = download_annotations("val2017", tmp_path, url=url, progress=False)
    assert result.downloaded_bytes == len(data)
    assert (tmp_path / ZIP_NAME).read_bytes() == data
    assert_extracted(tmp_path, contents)


def test_a_server_that_ignores_ranges_makes_the_download_start_over(
    tmp_path: Path, archive, server: FileServer
) -> None:
    url, data, contents = archive
    (tmp_path / f"{ZIP_NAME}.part").write_bytes(b"stale bytes from another file")
    server.ignore_range = True
    result = download_annotations("val2017", tmp_path, url=url, checksum=sha256(data), progress=False)
    assert server.log[-1][1] is not None  # we asked for a range, got the whole file
    assert result.archive.read_bytes() == data
    assert_extracted(tmp_path, contents)


def test_complete_part_file_is_finished_without_a_body(tmp_path: Path, archive, server: FileServer) -> None:
    url, data, contents = archive
    (tmp_path / f"{ZIP_NAME}.part").write_bytes(data)
    result = download_annotations("val2017", tmp_path, url=url, checksum=sha256(data), progress=False)
    assert server.log[-1] == (f"/{ZIP_NAME}", f"bytes={len(data)}-")
    assert result.downloaded_bytes == 0
    assert_extracted(tmp_path, contents)


def test_missing_file_and_missing_member_name_what_is_wrong(tmp_path: Path, server: FileServer) -> None:
    with pytest.raises(DownloadError, match=r"nope\.zip: not found \(HTTP 404\)"):
        download_annotations("val2017", tmp_path, url=f"{server.base}/nope.zip", progress=False)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("annotations/captions_val2017.json", "{}")
    server.files["/partial.zip"] = buffer.getvalue()
    with pytest.raises(DownloadError, match=r"partial\.zip has no instances_val2017\.json \(it has captions_val2017"):
        download_annotations("val2017", tmp_path, url=f"{server.base}/partial.zip", progress=False)
    server.files["/notazip.zip"] = b"<html>oops</html>"
    with pytest.raises(DownloadError, match=r"notazip\.zip is not a zip archive"):
        download_annotations("val2017", tmp_path, url=f"{server.base}/notazip.zip", progress=False)


def test_server_errors_are_retried_then_reported(tmp_path: Path) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503)

    client = httpx.Client(transport=httpx.MockTransport(handler))
    with pytest.raises(DownloadError, match="failed after 3 attempt"):
        download_annotations("val2017", tmp_path, url="http://127.0.0.1:9/x.zip", checksum="0" * 64, retries=2,
                             retry_wait_s=0, progress=False, client=client)
    assert len(calls) == 3


def test_the_official_url_is_checked_against_the_official_md5(tmp_path: Path) -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, content=b"not the real archive")

    client = httpx.Client(transport=httpx.MockTransport(handler))
    official_md5 = OFFICIAL_ARCHIVES["2017"].checksum.hexdigest
    with pytest.raises(ChecksumError, match=f"md5 of the download is .*expected {official_md5}"):
        download_annotations("val2017", tmp_path, progress=False, client=client)
    assert seen == [OFFICIAL_ARCHIVES["2017"].url]
    assert seen[0].endswith("/annotations/annotations_trainval2017.zip")
    assert OFFICIAL_ARCHIVES["2014"].url.endswith("annotations_trainval2014.zip")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("md5:F4BBAC642086DE4F52A3FDDA2DE5FA2C", Checksum("md5", "f4bbac642086de4f52a3fdda2de5fa2c")),
     ("a" * 64, Checksum("sha256", "a" * 64)), ("b" * 40, Checksum("sha1", "b" * 40))],
)
def test_checksum_parse(text: str, expected: Checksum) -> None:
    assert Checksum.parse(text) == expected


@pytest.mark.parametrize(("text", "message"), [("xyz", "not hex"), ("a" * 10, "cannot tell the algorithm"),
                                               ("sha256:abcd", "has 64 hex digits")])
def test_checksum_parse_rejects_bad_input(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Checksum.parse(text)


def test_split_names() -> None:
    assert split_year("val2017") == "2017" and split_year("train2014") == "2014"
    with pytest.raises(ValueError, match="unknown COCO split 'test2017'"):
        annotation_files("test2017")


def test_cli_download(tmp_path: Path, archive) -> None:
    url, data, contents = archive
    runner = CliRunner()
    result = runner.invoke(get_app(), ["coco", "download", "--split", "val2017", "--dest", str(tmp_path),
                                       "--url", url, "--sha256", sha256(data)])
    assert result.exit_code == 0, result.output
    assert f"downloaded {len(data):,} bytes; checksum sha256:{sha256(data)} (given)" in result.output
    assert str(tmp_path / "annotations" / "instances_val2017.json") in result.output
    assert f"next: vistune ingest --coco {tmp_path} --split val2017 --no-check-images" in result.output
    assert_extracted(tmp_path, contents)
    bad = runner.invoke(get_app(), ["coco", "download", "--split", "val2017", "--dest", str(tmp_path / "x"),
                                    "--url", url, "--checksum", "md5:" + "0" * 32])
    assert bad.exit_code == 1 and "error:" in bad.output and "expected 000" in bad.output


# ---------------------------------------------------------------- images, and download -> ingest
def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_download_with_images_then_ingest(tmp_path: Path, server: FileServer, sample_coco: Path, db_path: Path) -> None:
    split = "train2017"
    annotations = {f"annotations/{n}": (sample_coco / "annotations" / n).read_bytes() for n in annotation_files(split)}
    images = {f"{split}/{p.name}": p.read_bytes() for p in sorted((sample_coco / split).glob("*.jpg"))}
    server.files["/ann.zip"] = zip_of(annotations)
    server.files["/img.zip"] = zip_of({**images, f"{split}/README.txt": b"not an image"})
    dest = tmp_path / "coco"
    result = CliRunner().invoke(get_app(), [
        "coco", "download", "--split", split, "--dest", str(dest), "--url", f"{server.base}/ann.zip",
        "--images", "--images-url", f"{server.base}/img.zip",
        "--images-checksum", f"sha256:{sha256(server.files['/img.zip'])}"])
    assert result.exit_code == 0, result.output
    assert f"checksum sha256:{sha256(server.files['/img.zip'])} (given)" in result.output
    assert f"next: vistune ingest --coco {dest} --split {split}" in result.output
    assert sorted(p.name for p in (dest / split).iterdir()) == sorted(Path(n).name for n in images)
    stats = ingest(dest, split, db_path)
    assert stats.images == len(images) == 4 and not stats.issues


def test_extract_images_keeps_finished_files_and_rejects_a_zip_without_images(tmp_path: Path) -> None:
    archive = tmp_path / "val2017.zip"
    archive.write_bytes(zip_of({"val2017/a.jpg": b"A" * 10, "val2017/b.png": b"B" * 20, "val2017/": b""}))
    out = tmp_path / "val2017"
    out.mkdir()
    (out / "a.jpg").write_bytes(b"X" * 10)  # same size: treated as already extracted
    (out / "b.png").write_bytes(b"short")  # wrong size: extracted again
    assert extract_images(archive, "val2017", out) == 2
    assert (out / "a.jpg").read_bytes() == b"X" * 10 and (out / "b.png").read_bytes() == b"B" * 20
    archive.write_bytes(zip_of({"annotations/captions_val2017.json": b"{}"}))
    with pytest.raises(DownloadError, match=r"holds no image files .* is it the val2017 image zip"):
        extract_images(archive, "val2017", out)


def test_image_archive_defaults(tmp_path: Path) -> None:
    assert image_archive("val2017").url == f"{IMAGES_BASE_URL}/val2017.zip"
    assert image_archive("val2017").checksum == Checksum("md5", "442b8da7639aecaf257c1dceb8ba8c80")
    assert image_archive("train2014") is None  # no agreed checksum: sidecar or --checksum
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if request.url.path.endswith(".sha256"):
            return httpx.Response(404)
        return httpx.Response(200, content=zip_of({"train2014/COCO_train2014_000000000009.jpg": b"jpg"}))

    client = httpx.Client(transport=httpx.MockTransport(handler))
    result = download_images("train2014", tmp_path, progress=False, client=client)
    assert seen == [f"{IMAGES_BASE_URL}/train2014.zip.sha256", f"{IMAGES_BASE_URL}/train2014.zip"]
    assert result.checksum == "unverified"
    assert (tmp_path / "train2014" / "COCO_train2014_000000000009.jpg").read_bytes() == b"jpg"
