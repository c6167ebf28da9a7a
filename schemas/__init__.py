"""Every pydantic model of vistune: table rows, LLM outputs, export records, settings. No I/O."""

# The table rows first: schemas/eval.py and schemas/tables.py import each other (eval rows subclass TableRow).
import schemas.tables  # noqa: F401
