"""Prefect flows that drive the DVC pipeline: scheduled reruns, retraining, feature builds."""
