"""`vistune coco download`: fetch COCO annotation json files (and images), resumable and checksummed."""

from __future__ import annotations

from pathlib import Path

import typer

from flows.cli import coco_app
from tasks.ingest.download import (
    OFFICIAL_ARCHIVES,
    DownloadError,
    DownloadResult,
    download_annotations,
    download_images,
)


@coco_app.command("download")
def download(
    split: str = typer.Option("val2017", "--split", help="train2017, val2017, train2014 or val2014."),
    dest: Path = typer.Option(..., "--dest", help="Folder for the zip; json files go to DEST/annotations/."),
    url: str | None = typer.Option(
        None, "--url", help=f"Archive URL (default: the official one, e.g. {OFFICIAL_ARCHIVES['2017'].url})."),
    checksum: str | None = typer.Option(
        None, "--checksum", help="Expected digest: sha256:<hex>, md5:<hex> or bare hex (default: known for the "
        "official URL, else the server's <url>.sha256 sidecar if any)."),
    sha256: str | None = typer.Option(None, "--sha256", help="Shorthand for --checksum sha256:<hex>."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check the archive's checksum."),
    retries: int = typer.Option(5, "--retries", min=0, help="Retries after a dropped connection (each resumes)."),
    images: bool = typer.Option(
        False, "--images/--no-images", help="Also fetch the split's image zip into DEST/<split>/ "
        "(val2017: 778 MB, train2017: 18 GB)."),
    images_url: str | None = typer.Option(None, "--images-url", help="Image zip URL (default: the official one)."),
    images_checksum: str | None = typer.Option(None, "--images-checksum", help="Expected digest of the image zip."),
) -> None:
    """Download the annotation archive for a split and unpack its captions and instances json (and its images)."""
    if checksum and sha256:
        raise typer.BadParameter("give --checksum or --sha256, not both")
    try:
        expected = checksum or (f"sha256:{sha256}" if sha256 else None)
        result = download_annotations(split, dest, url=url, checksum=expected, verify=verify, retries=retries)
        _report(result)
        if images:
            _report(download_images(split, dest, url=images_url, checksum=images_checksum, verify=verify,
                                    retries=retries))
    except (DownloadError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if images:
        typer.echo(f"next: vistune ingest --coco {dest} --split {split}")
    else:
        typer.echo(f"next: vistune ingest --coco {dest} --split {split} --no-check-images "
                   f"(or rerun with --images to fetch the pictures into {Path(dest) / split}/)")


def _report(result: DownloadResult) -> None:
    action = f"downloaded {result.downloaded_bytes:,} bytes" if result.downloaded_bytes else "reused"
    typer.echo(f"{result.archive}: {action}; checksum {result.checksum}")
    for path in result.files:
        typer.echo(f"  {path}")
