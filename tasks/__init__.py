"""Units of work: plain functions (importable without Prefect) and thin Prefect task wrappers."""
