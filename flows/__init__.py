"""Prefect flows and the `vistune` CLI: composition only."""
