"""Labelled data for tests: the validator corpus and its calibration script."""
