"""Prefect flows that drive the pipeline (they never reimplement stages)."""
