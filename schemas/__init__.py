"""Every pydantic model of vistune: table rows, LLM outputs, export records, settings. No I/O."""
