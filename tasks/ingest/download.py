"""Download COCO archives: resumable, checksummed, unpacked where `vistune ingest` looks.

`download_annotations("val2017", dest)` fetches the official `annotations_trainval2017.zip`
(one archive holds both train and val json files), keeps it as `DEST/<name>.zip`, and extracts
`captions_val2017.json` and `instances_val2017.json` into `DEST/annotations/`, where
`vistune ingest --coco DEST --split val2017` looks for them. `download_images("val2017", dest)`
does the same for the image zip (`zips/val2017.zip`, 778 MB), unpacked into `DEST/val2017/`.

- Resume: bytes go to `<name>.zip.part`; a rerun, or a retry after a dropped connection, asks
  the server for the rest with an HTTP `Range` request. A server that ignores ranges (200
  instead of 206) makes the download start over.
- Checksum: the official archives' MD5s are known (`OFFICIAL_ARCHIVES`, `OFFICIAL_IMAGE_ARCHIVES`).
  For another URL pass `checksum` (`sha256:<hex>`, `md5:<hex>`, or bare hex whose length names
  the algorithm); without one, a sidecar `<url>.sha256` on the server is used when it exists. A mismatch deletes the
  file (it cannot be resumed into a good one) and raises `ChecksumError`. After a download, the
  archive's SHA-256 is written beside it as `<name>.zip.sha256` (`sha256sum -c` format) and
  checked when the archive is reused.

httpx streams the body, tenacity retries dropped connections and 5xx answers with backoff,
and rich draws the progress bar.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

CHUNK_BYTES = 1 << 20
_HEX_ALGORITHMS = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}
_SPLIT = re.compile(r"^(train|val)(2014|2017)$")


class DownloadError(RuntimeError):
    """A download that cannot complete: bad URL, server error after retries, or a broken archive."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not match the expected checksum."""


@dataclass(frozen=True)
class Checksum:
    """An expected digest, e.g. `Checksum("md5", "f4bb…")`."""

    algorithm: str
    hexdigest: str

    @classmethod
    def parse(cls, text: str) -> Checksum:
        """Read `algo:hex`, or bare hex whose length names the algorithm (32 md5, 40 sha1, 64 sha256)."""
        algorithm, _, digest = text.strip().rpartition(":")
        digest = digest.lower()
        if not re.fullmatch(r"[0-9a-f]+", digest):
            raise ValueError(f"checksum {text!r} is not hex; expected e.g. sha256:<64 hex digits> or md5:<32>")
        algorithm = algorithm.lower() or _HEX_ALGORITHMS.get(len(digest), "")
        if algorithm not in hashlib.algorithms_available:
            raise ValueError(f"checksum {text!r}: cannot tell the algorithm; write it as sha256:<hex> or md5:<hex>")
        if len(digest) != hashlib.new(algorithm).digest_size * 2:
            raise ValueError(f"checksum {text!r}: a {algorithm} digest has {hashlib.new(algorithm).digest_size * 2} "
                             f"hex digits, this one has {len(digest)}")
        return cls(algorithm, digest)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"


@dataclass(frozen=True)
class Archive:
    """A known annotation archive: where it is and what it must hash to."""

    url: str
    checksum: Checksum
    size: int | None  # bytes, where known


# MD5s and sizes of the official archives, as published widely by dataset loaders (also the
# S3 ETag of these single-part uploads).
OFFICIAL_ARCHIVES: dict[str, Archive] = {
    "2017": Archive("http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
                    Checksum("md5", "f4bbac642086de4f52a3fdda2de5fa2c"), 252_907_541),
    "2014": Archive("http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
                    Checksum("md5", "0a379cfc70b0e71301e0f377548639bd"), 252_872_794),
}


IMAGES_BASE_URL = "http://images.cocodataset.org/zips"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Image zips whose MD5 several independent dataset loaders agree on; train2014 is left out
# because published values disagree (the server's sidecar or --checksum applies there).
OFFICIAL_IMAGE_ARCHIVES: dict[str, Archive] = {
    "train2017": Archive(f"{IMAGES_BASE_URL}/train2017.zip", Checksum("md5", "cced6f7f71b7629ddf16f17bbcfab6b2"),
                         19_336_861_798),
    "val2017": Archive(f"{IMAGES_BASE_URL}/val2017.zip", Checksum("md5", "442b8da7639aecaf257c1dceb8ba8c80"),
                       815_585_330),
    "val2014": Archive(f"{IMAGES_BASE_URL}/val2014.zip", Checksum("md5", "a3d79f5ed8d289b7a7554ce06a5782b3"), None),
}


@dataclass(frozen=True)
class DownloadResult:
    """What `download_annotations` produced."""

    archive: Path
    files: tuple[Path, ...]  # the extracted json files, or the image folder
    checksum: str  # how the archive was verified, e.g. "md5:f4bb… (official)" or "unverified"
    downloaded_bytes: int


def split_year(split: str) -> str:
    """The COCO release year of a split name (`val2017` -> `2017`), with a clear error otherwise."""
    match = _SPLIT.match(split)
    if not match:
        raise ValueError(f"unknown COCO split {split!r}; expected train2017, val2017, train2014 or val2014")
    return match.group(2)


def annotation_files(split: str) -> tuple[str, str]:
    """The json files ingestion needs for a split."""
    split_year(split)
    return f"captions_{split}.json", f"instances_{split}.json"


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    return isinstance(exc, httpx.TransportError | _Incomplete)


class _Incomplete(Exception):
    """The server closed the body early without a transport error: resume from what we have."""


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), disable=not enabled, transient=False,
    )


def _fetch_once(client: httpx.Client, url: str, part: Path, progress: Progress, task_id: int) -> int:
    """One GET from where `part` ends; returns the bytes received. Raises to trigger a retry."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416 and offset:
            total = _content_range_total(response.headers.get("content-range", ""))
            if total == offset:  # the part file already holds everything
                progress.update(task_id, total=total, completed=total)
                return 0
            part.unlink()  # holds more than the file has: the file changed, start over
            raise _Incomplete(f"{part}: the server's file is {total} bytes, ours {offset}; starting over")
        if response.status_code == 404:
            raise DownloadError(f"{url}: not found (HTTP 404); check --url")
        response.raise_for_status()
        if response.status_code == 206:
            start = _content_range_start(response.headers.get("content-range", ""))
            if start != offset:
                raise DownloadError(f"{url}: asked for bytes from {offset}, server sent from {start}")
        else:
            offset = 0  # 200: the server ignores ranges and sends the whole file
        length = response.headers.get("content-length")
        total = offset + int(length) if length is not None else None
        progress.update(task_id, total=total, completed=offset)
        received = 0
        with part.open("ab" if offset else "wb") as f:
            for chunk in response.iter_bytes():  # no chunk_size: a re-chunking buffer would be lost on a cut-off
                f.write(chunk)
                received += len(chunk)
                progress.update(task_id, advance=len(chunk))
    if total is not None and offset + received < total:
        raise _Incomplete(f"{url}: got {offset + received} of {total} bytes")
    return received


def _content_range_start(value: str) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value)
    return int(match.group(1)) if match else None


def _content_range_total(value: str) -> int | None:
    match = re.search(r"/(\d+)$", value)
    return int(match.group(1)) if match else None


def fetch_sidecar_checksum(client: httpx.Client, url: str) -> Checksum | None:
    """The SHA-256 published beside `url` as `<url>.sha256` (`sha256sum` format), if the server has one."""
    try:
        response = client.get(url + ".sha256")
    except httpx.HTTPError:
        return None
    if response.status_code != 200 or not response.text.strip():
        return None
    return Checksum("sha256", Checksum.parse("sha256:" + response.text.split()[0]).hexdigest)


def download_file(
    url: str,
    dest: Path,
    *,
    checksum: Checksum | None = None,
    retries: int = 5,
    retry_wait_s: float = 1.0,
    progress: bool = True,
    client: httpx.Client | None = None,
    on_attempt: Callable[[int], None] | None = None,
) -> int:
    """Download `url` to `dest`, resuming a `dest.part` left by an earlier try; returns bytes received.

    Dropped connections and 5xx answers are retried `retries` times (exponential backoff from
    `retry_wait_s`), each retry resuming where the last stopped. The checksum, when given, is
    checked before the file is moved to `dest`; on mismatch the partial file is deleted.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    own_client = client is None
    client = client or httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0, read=120.0))
    received = 0
    try:
        with _progress(progress) as bar:
            task_id = bar.add_task(dest.name, total=None)
            for attempt in Retrying(stop=stop_after_attempt(retries + 1), reraise=True,
                                    wait=wait_exponential(multiplier=retry_wait_s, max=30),
                                    retry=retry_if_exception(_retryable)):
                with attempt:
                    if on_attempt:
                        on_attempt(attempt.retry_state.attempt_number)
                    received += _fetch_once(client, url, part, bar, task_id)
    except (httpx.HTTPError, _Incomplete) as exc:
        raise DownloadError(f"{url}: download failed after {retries + 1} attempt(s) ({exc}); "
                            f"rerun to resume from the {part.stat().st_size if part.exists() else 0} bytes in {part}"
                            ) from None
    finally:
        if own_client:
            client.close()
    if checksum is not None:
        actual = file_digest(part, checksum.algorithm)
        if actual != checksum.hexdigest:
            part.unlink()
            raise ChecksumError(f"{url}: {checksum.algorithm} of the download is {actual}, expected "
                                f"{checksum.hexdigest}; deleted it. Rerun to download again, or check --url/--checksum")
    part.replace(dest)
    return received


def _write_sidecar(archive: Path) -> None:
    archive.with_name(archive.name + ".sha256").write_text(f"{file_digest(archive, 'sha256')}  {archive.name}\n")


def _sidecar(archive: Path) -> Checksum | None:
    path = archive.with_name(archive.name + ".sha256")
    if not path.exists():
        return None
    return Checksum.parse("sha256:" + path.read_text().split()[0])


def extract_annotations(archive: Path, names: tuple[str, ...], dest_dir: Path) -> tuple[Path, ...]:
    """Extract the named json files (found by base name anywhere in the zip) into `dest_dir`."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise DownloadError(f"{archive} is not a zip archive (a broken download?): delete it and rerun") from None
    out = []
    with zf:
        by_name = {Path(info.filename).name: info for info in zf.infolist() if not info.is_dir()}
        for name in names:
            info = by_name.get(name)
            if info is None:
                have = ", ".join(sorted(n for n in by_name if n.endswith(".json"))) or "no json files"
                raise DownloadError(f"{archive} has no {name} (it has {have}); is --url the right archive?")
            target = dest_dir / name  # base name only: a hostile member path cannot escape dest_dir
            if not (target.exists() and target.stat().st_size == info.file_size):
                tmp = target.with_name(target.name + ".tmp")
                with zf.open(info) as src, tmp.open("wb") as dst:
                    while chunk := src.read(CHUNK_BYTES):
                        dst.write(chunk)
                tmp.replace(target)
            out.append(target)
    return tuple(out)


def fetch_archive(
    url: str,
    dest: Path,
    *,
    checksum: str | Checksum | None = None,
    official: Archive | None = None,
    verify: bool = True,
    retries: int = 5,
    retry_wait_s: float = 1.0,
    progress: bool = True,
    client: httpx.Client | None = None,
) -> tuple[Path, str, int]:
    """Make sure `dest/<file name of url>` holds the verified archive; returns (path, how verified, bytes fetched).

    Checksum, in order: `checksum`; `official`'s when `url` is the official one; the server's
    `<url>.sha256` sidecar; none ("unverified"). `verify=False` skips it. An archive already in
    `dest` that verifies (or matches its local `.sha256`) is reused; one that does not is fetched again.
    """
    archive = dest / (Path(urlparse(url).path).name or "download.zip")
    expected: Checksum | None = None
    source = "unverified"
    if verify:
        if checksum is not None:
            expected = checksum if isinstance(checksum, Checksum) else Checksum.parse(checksum)
            source = f"{expected} (given)"
        elif official is not None and url == official.url:
            expected, source = official.checksum, f"{official.checksum} (official)"
    received = 0
    if archive.exists():
        check = expected or (_sidecar(archive) if verify else None)
        if check is not None and file_digest(archive, check.algorithm) != check.hexdigest:
            archive.unlink()  # corrupt or a different file: fetch it again
        elif check is not None and expected is None:
            source = f"{check} (local sidecar)"
    if not archive.exists():
        own_client = client is None
        http = client or httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0, read=120.0))
        try:
            if verify and expected is None:
                expected = fetch_sidecar_checksum(http, url)
                if expected is not None:
                    source = f"{expected} (server sidecar)"
            received = download_file(url, archive, checksum=expected, retries=retries, retry_wait_s=retry_wait_s,
                                     progress=progress, client=http)
        finally:
            if own_client:
                http.close()
        _write_sidecar(archive)
    return archive, source, received


def download_annotations(
    split: str,
    dest: str | Path,
    *,
    url: str | None = None,
    checksum: str | Checksum | None = None,
    verify: bool = True,
    retries: int = 5,
    retry_wait_s: float = 1.0,
    progress: bool = True,
    client: httpx.Client | None = None,
) -> DownloadResult:
    """Fetch the annotation archive holding `split` and extract its captions and instances json
    into `dest/annotations/` (checksum rules: `fetch_archive`)."""
    official = OFFICIAL_ARCHIVES[split_year(split)]
    archive, source, received = fetch_archive(
        url or official.url, Path(dest), checksum=checksum, official=official, verify=verify, retries=retries,
        retry_wait_s=retry_wait_s, progress=progress, client=client)
    files = extract_annotations(archive, annotation_files(split), Path(dest) / "annotations")
    return DownloadResult(archive=archive, files=files, checksum=source, downloaded_bytes=received)


def image_archive(split: str) -> Archive | None:
    """The official image zip of a split, with its checksum where one is known."""
    split_year(split)
    return OFFICIAL_IMAGE_ARCHIVES.get(split)


def extract_images(archive: Path, split: str, dest_dir: Path) -> int:
    """Extract the image files of an image zip (members under any `<split>/` folder) into `dest_dir`.

    Files already there with the right size are kept, so an interrupted unzip resumes. Returns
    how many image files the archive holds.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise DownloadError(f"{archive} is not a zip archive (a broken download?): delete it and rerun") from None
    count = 0
    with zf:
        for info in zf.infolist():
            name = Path(info.filename)
            if info.is_dir() or name.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            count += 1
            target = dest_dir / name.name  # base name only: a hostile member path cannot escape dest_dir
            if target.exists() and target.stat().st_size == info.file_size:
                continue
            tmp = target.with_name(target.name + ".tmp")
            with zf.open(info) as src, tmp.open("wb") as dst:
                while chunk := src.read(CHUNK_BYTES):
                    dst.write(chunk)
            tmp.replace(target)
    if count == 0:
        raise DownloadError(f"{archive} holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
                            f"is it the {split} image zip?")
    return count


def download_images(
    split: str,
    dest: str | Path,
    *,
    url: str | None = None,
    checksum: str | Checksum | None = None,
    verify: bool = True,
    retries: int = 5,
    retry_wait_s: float = 1.0,
    progress: bool = True,
    client: httpx.Client | None = None,
) -> DownloadResult:
    """Fetch a split's image zip (e.g. `zips/val2017.zip`, 778 MB) and unpack it into `dest/<split>/`."""
    official = image_archive(split)
    url = url or (official.url if official else f"{IMAGES_BASE_URL}/{split}.zip")
    archive, source, received = fetch_archive(
        url, Path(dest), checksum=checksum, official=official, verify=verify, retries=retries,
        retry_wait_s=retry_wait_s, progress=progress, client=client)
    folder = Path(dest) / split
    extract_images(archive, split, folder)
    return DownloadResult(archive=archive, files=(folder,), checksum=source, downloaded_bytes=received)
