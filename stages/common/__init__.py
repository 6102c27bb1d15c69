"""Pieces every stage shares: datasets, params, errors, seeding, progress, reports."""
