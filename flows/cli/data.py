"""`vistune ingest` and `vistune sql`: getting COCO in, and looking at the store."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from flows.cli import app
from tasks import store
from tasks.ingest.coco import IngestError, ingest
from tasks.store import journal

console = Console()
err_console = Console(stderr=True)

DbOption = Annotated[
    Path | None, typer.Option("--db", help="DuckDB file (default: $VISTUNE_DB or data/vistune.duckdb)")
]


@app.command("ingest")
def ingest_command(
    coco: Annotated[Path, typer.Option("--coco", help="COCO root: annotations/ and one folder per split")],
    split: Annotated[list[str], typer.Option("--split", help="Split(s) to ingest, e.g. train2017, val2014")] = [  # noqa: B006
        "train2017"
    ],
    strict: Annotated[bool, typer.Option("--strict", help="Fail on the first bad record instead of skipping")] = False,
    check_images: Annotated[bool, typer.Option(help="Open every image file to check it exists and is readable")] = True,
    db: DbOption = None,
) -> None:
    """Ingest COCO captions and instances (pycocotools) into the store. Re-ingesting adds nothing."""
    for one_split in split:
        try:
            stats = ingest(coco, one_split, db, strict=strict, check_images=check_images)
        except IngestError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(1) from None
        table = Table(title=f"ingest {one_split} (run {stats.run_id})")
        for col in ("", "valid", "new"):
            table.add_column(col, justify="right")
        for name in ("images", "captions", "objects"):
            table.add_row(name, str(getattr(stats, name)), str(stats.added[name]))
        console.print(table)
        if stats.issues:
            err_console.print(f"[yellow]skipped {len(stats.issues)} bad record(s):[/yellow] "
                              + ", ".join(f"{reason}={n}" for reason, n in sorted(stats.skipped.items())))
            for issue in stats.issues[:10]:
                err_console.print(f"  {issue.reason}: {issue.message()}", highlight=False)
            if len(stats.issues) > 10:
                query = f"SELECT * FROM ingest_errors WHERE run_id = '{stats.run_id}'"
                err_console.print(f'  ... all of them: vistune sql "{query}"', highlight=False)
    console.print(f"database: {store.resolve_db(db)}")


@app.command("sql")
def sql_command(
    query: Annotated[str, typer.Argument(help="SQL to run, read-only (e.g. \"SELECT * FROM dataset LIMIT 5\")")],
    db: DbOption = None,
    output: Annotated[str, typer.Option("--format", help="table | csv | json")] = "table",
    max_rows: Annotated[int, typer.Option(help="Rows shown in table format")] = 50,
    timeout: Annotated[float, typer.Option(help="Seconds to wait while a writer holds the database")] = 30.0,
    flushed_only: Annotated[
        bool, typer.Option("--flushed-only", help="Show `responses` as stored, without the rows still in journals")
    ] = False,
) -> None:
    """Run a read-only SQL query against the store (safe while a flow is writing).

    `responses` includes the answers that running (or crashed) generations have journaled but not
    yet flushed, so it is current to the second; the plain `duckdb` CLI sees the last flush.
    """
    for tries_left in (2, 1, 0):
        try:
            with store.read(db, timeout_s=timeout) as con:
                if not flushed_only:
                    journal.include_journal_rows(con, store.resolve_db(db))
                cur = con.execute(query)
                if cur.description is None:
                    return
                names = [d[0] for d in cur.description]
                rows = cur.fetchall()
            break
        except FileNotFoundError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(1) from None
        except Exception as exc:  # DuckDB's errors already say what is wrong with the query
            if tries_left and journal.is_vanished_segment(exc):
                continue  # a flush moved a journal segment into the table meanwhile: list them again
            err_console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(1) from None
    if output == "json":
        print(json.dumps([dict(zip(names, r, strict=True)) for r in rows], default=str, ensure_ascii=False, indent=1))
    elif output == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(names)
        writer.writerows(rows)
    else:
        shown = f", first {max_rows} shown" if len(rows) > max_rows else ""
        table = Table(*names, caption=f"{len(rows)} row(s){shown}")
        for row in rows[:max_rows]:
            table.add_row(*("NULL" if v is None else str(v) for v in row))
        console.print(table)
