"""Stage `av_mtrnn_train`: the audio-visual MTRNN, the paper's future work (seed 000).

    python -m stages.gameplay.av_mtrnn_train [--params FILE]

`mtrnn_train` with the sound: every step's IO vector is the CAE's picture feature followed by the
clip's log-mel spectrum at that step (section `av_mtrnn_train`, its `audio` set). The evaluation
(`av_mtrnn_evaluate`) recognises held-out clips from their pictures alone and lets the network
generate the sound.
"""

from __future__ import annotations

from typing import Any

from stages.common.cli import run_stage
from stages.gameplay.mtrnn_train import Params, train

STAGE = "av_mtrnn_train"
MODULE = "stages.gameplay.av_mtrnn_train"


def main(params: Params) -> dict[str, Any]:
    """Train the audio-visual MTRNN on picture features and log-mel spectra of the train clips."""
    return train(params, STAGE, MODULE)


if __name__ == "__main__":
    run_stage(STAGE, Params, main)
