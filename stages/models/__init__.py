"""Plain-torch model definitions (no torchvision), loadable from the reference checkpoints."""
