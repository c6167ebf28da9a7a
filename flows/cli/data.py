"""`vistune ingest` and `vistune sql`: getting COCO in, and looking at the store."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path
from typing import Annotated

import duckdb
import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from flows.cli import app
from flows.cli.output import make_console
from tasks import store
from tasks.ingest.coco import IngestError, ingest
from tasks.store import journal

console = make_console()
err_console = make_console(stderr=True)

DbOption = Annotated[
    Path | None, typer.Option("--db", help="DuckDB file (default: $VISTUNE_DB or data/vistune.duckdb)")
]


@app.command("ingest")
def ingest_command(
    coco: Annotated[Path, typer.Option("--coco", help="COCO root: annotations/ and one folder per split")],
    split: Annotated[
        list[str] | None,
        typer.Option("--split", help="Split(s) to ingest, e.g. train2017 (default: every split found)"),
    ] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Fail on the first bad record instead of skipping")] = False,
    check_images: Annotated[bool, typer.Option(help="Open every image file to check it exists and is readable")] = True,
    db: DbOption = None,
) -> None:
    """Ingest COCO captions and instances (pycocotools) into the store. Re-ingesting adds nothing."""
    from schemas.flow_params import IngestParams

    splits = IngestParams(coco_dir=str(coco), splits=split or []).splits  # the flows' default: every split found
    if not splits:
        err_console.print(Text(f"error: {coco}/annotations has no captions_<split>.json: is it a COCO folder?"),
                          soft_wrap=True)
        raise typer.Exit(1)
    for one_split in splits:
        try:
            stats = ingest(coco, one_split, db, strict=strict, check_images=check_images)
        except IngestError as exc:
            err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
            raise typer.Exit(1) from None
        table = Table(title=escape(f"ingest {one_split} (run {stats.run_id})"))
        for col in ("", "valid", "new"):
            table.add_column(col, justify="right")
        for name in ("images", "captions", "objects"):
            table.add_row(name, str(getattr(stats, name)), str(stats.added[name]))
        console.print(table)
        if stats.issues:
            err_console.print(f"[yellow]skipped {len(stats.issues)} bad record(s):[/yellow] "
                              + escape(", ".join(f"{reason}={n}" for reason, n in sorted(stats.skipped.items()))))
            for issue in stats.issues[:10]:  # messages quote the data ("bbox must be 4 numbers [...]"): verbatim
                err_console.print(f"  {issue.reason}: {issue.message()}", highlight=False, markup=False)
            if len(stats.issues) > 10:
                query = f"SELECT * FROM ingest_errors WHERE run_id = '{stats.run_id}'"
                err_console.print(f'  ... all of them: vistune sql "{query}"', highlight=False, markup=False)
    console.print(f"database: {store.resolve_db(db)}", markup=False, highlight=False)


# What `vistune sql` runs: queries. Everything else is refused before DuckDB sees it (one line, exit 2),
# and the connection itself is read-only, cannot touch files beyond the journal segments it shows
# (enable_external_access=false) and cannot be reconfigured (lock_configuration=true).
_REFUSED = {
    "COPY": "COPY reads or writes files",
    "COPY_DATABASE": "COPY FROM DATABASE writes another database",
    "EXPORT": "EXPORT DATABASE writes files",
    "ATTACH": "ATTACH opens another database",
    "DETACH": "DETACH changes the attached databases",
    "CREATE": "CREATE makes objects (temporary ones too)",
    "CREATE_FUNC": "CREATE FUNCTION makes objects",
    "SET": "SET/RESET changes the configuration",
    "VARIABLE_SET": "SET VARIABLE changes the session",
    "LOAD": "INSTALL/LOAD add extensions",
    "EXTENSION": "extension statements add extensions",
    "CALL": "CALL runs procedures (use SELECT * FROM pragma_...() for read-only table functions)",
    "TRANSACTION": "transactions are not needed to read",
}
# PRAGMAs that only read (pragma name -> allowed); any other PRAGMA may change settings or data.
_READ_PRAGMAS = frozenset({"table_info", "show", "show_tables", "show_tables_expanded", "show_databases",
                           "database_list", "database_size", "storage_info", "version", "platform", "functions",
                           "collations", "metadata_info", "user_agent"})
_PRAGMA_NAME = re.compile(r"^\s*PRAGMA\s+(\w+)", re.IGNORECASE)
_EXPLAIN = re.compile(r"^\s*EXPLAIN\s+(?:ANALYZE\s+)?(?:\([^)]*\)\s*)?(.*)$", re.IGNORECASE | re.DOTALL)


class Refused(Exception):
    """A statement `vistune sql` does not run."""


def check_read_only(con: duckdb.DuckDBPyConnection, query: str) -> None:
    """Raise `Refused` unless every statement of `query` is a query (SELECT, EXPLAIN of one, a read-only PRAGMA)."""
    for statement in con.extract_statements(query):
        kind = statement.type.name
        if kind == "SELECT":
            continue
        if kind == "EXPLAIN":
            inner = _EXPLAIN.match(statement.query)
            if inner and inner.group(1).strip():
                check_read_only(con, inner.group(1))  # EXPLAIN ANALYZE runs what it explains
                continue
        if kind == "PRAGMA":
            name = _PRAGMA_NAME.match(statement.query)
            if name and name.group(1).lower() in _READ_PRAGMAS:
                continue
            raise Refused(f"PRAGMA {name.group(1) if name else ''} may change settings or data".replace("  ", " "))
        raise Refused(_REFUSED.get(kind, f"{kind} statements change the database"))


def lock_down(con: duckdb.DuckDBPyConnection, readable: list[Path]) -> None:
    """No file access but `readable` (the journal segments of the `responses` view), no configuration changes."""
    con.execute("SET allowed_paths = ?", [[str(p) for p in readable]])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def _fail(message: str, code: int) -> typer.Exit:
    err_console.print(Text("error: ", style="red") + Text(message), soft_wrap=True)  # data, never markup; one line
    return typer.Exit(code)


@app.command("sql")
def sql_command(
    query: Annotated[
        str, typer.Argument(metavar="QUERY", help="SQL to run, read-only (e.g. \"SELECT * FROM dataset LIMIT 5\")")
    ],
    db: DbOption = None,
    output: Annotated[str, typer.Option("--format", help="table | csv | json")] = "table",
    max_rows: Annotated[int, typer.Option(help="Rows shown in table format")] = 50,
    timeout: Annotated[float, typer.Option(help="Seconds to wait while a writer holds the database")] = 30.0,
    flushed_only: Annotated[
        bool, typer.Option("--flushed-only", help="Show `responses` as stored, without the rows still in journals")
    ] = False,
) -> None:
    """Run a read-only SQL query against the store (safe while a flow is writing).

    Queries only: SELECT (DESCRIBE, SHOW, SUMMARIZE), EXPLAIN and read-only PRAGMAs. Writes, COPY,
    ATTACH, file readers (read_csv, read_text, glob), SET, INSTALL/LOAD and temporary objects are
    refused. `responses` includes the answers that running (or crashed) generations have journaled
    but not yet flushed, so it is current to the second; the plain `duckdb` CLI sees the last flush.
    """
    db_file = store.resolve_db(db)
    listed: list[Path] = []
    for tries_left in (2, 1, 0):
        try:
            with store.read(db, timeout_s=timeout) as con:
                check_read_only(con, query)
                listed = [] if flushed_only else journal.segments(db_file)
                if listed:  # the view reads the segments: made before file access is switched off
                    journal.include_journal_rows(con, db_file, listed)
                lock_down(con, listed)
                cur = con.execute(query)
                if cur.description is None:
                    return
                names = [d[0] for d in cur.description]
                rows = cur.fetchall()
            break
        except FileNotFoundError as exc:
            raise _fail(str(exc), 1) from None
        except Refused as exc:
            raise _fail(f"refused: {exc}; `vistune sql` runs read-only queries only", 2) from None
        except duckdb.PermissionException as exc:
            if tries_left and any(not p.exists() for p in listed):
                continue  # a flushed segment vanished: DuckDB then looks for other files, which it may not
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise _fail(f"refused: `vistune sql` reads the database only, no other file ({first})", 2) from None
        except duckdb.OutOfMemoryException as exc:  # `SET` is refused here, so say which setting raises the cap
            first = str(exc).splitlines()[0]
            raise _fail(f"{first}; DuckDB's memory cap is VISTUNE_DUCKDB_MEMORY_LIMIT={store.memory_limit()}: raise "
                        f"it for this query, e.g. VISTUNE_DUCKDB_MEMORY_LIMIT=2GB vistune sql ...", 1) from None
        except Exception as exc:  # DuckDB's errors already say what is wrong with the query
            if tries_left and journal.is_vanished_segment(exc):
                continue  # a flush moved a journal segment into the table meanwhile: list them again
            raise _fail(str(exc), 1) from None
    if output == "json":
        print(json.dumps([dict(zip(names, r, strict=True)) for r in rows], default=str, ensure_ascii=False, indent=1))
    elif output == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(names)
        writer.writerows(rows)
    else:
        shown = f", first {max_rows} shown" if len(rows) > max_rows else ""
        table = Table(*(escape(n) for n in names), caption=f"{len(rows)} row(s){shown}")
        for row in rows[:max_rows]:
            table.add_row(*(Text("NULL" if v is None else str(v)) for v in row))  # Text: cells are data, not markup
        console.print(table)
