"""From responses to a dataset: validate, content rules, dedup, export, report."""
