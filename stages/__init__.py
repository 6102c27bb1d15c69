"""The pipeline's stages: one module per DVC stage, shared pieces in `stages.common`."""
