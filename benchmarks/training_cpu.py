"""CPU training steps of the embedded default, before and after the layout and wiring changes.

What `make repro` spends most of its time on is training on 2 CPU cores. For each family this
times one training step of the default configuration (`params.yaml`) two ways, alternating, and
quotes medians:

- conv families (CAE, MDBiGAN, sequential VAE, DMM, conditional MoCoGAN): the model as built
  (`model.to(device)`, NCHW weights: the reference) against `training.to_device`
  (2-D convolutions' weights channels-last, so they run in NHWC);
- MTRNN: the update as three products of the groups' inputs (the reference, the code before)
  against one product with the fused `wiring()`; both must give the same outputs.

    python benchmarks/training_cpu.py [--rounds 7] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

# isort: off
import stages  # noqa: F401 - first: pins the CPU kernels `dvc repro` runs, before torch loads

# isort: on
import torch

from stages.common import training
from stages.common.params import load_section
from stages.gameplay import cae_train, mtrnn_train
from stages.gameplay.cae import CAE
from stages.gameplay.cae import Config as CAEConfig
from stages.gameplay.mtrnn import MTRNN, prediction_loss
from stages.gameplay.mtrnn import Config as MTRNNConfig
from stages.motionmnist import cmocogan_train, dmm_train, seqvae_train
from stages.motionmnist import train as mdbigan_train
from stages.motionmnist.cmocogan import CMoCoGAN, losses
from stages.motionmnist.cmocogan import Config as CMoCoGANConfig
from stages.motionmnist.dmm import DMM
from stages.motionmnist.dmm import Config as DMMConfig
from stages.motionmnist.mdbigan import Config as MDBiGANConfig
from stages.motionmnist.mdbigan import MDBiGAN, init_weights, to_video
from stages.motionmnist.seqvae import Config as SeqVAEConfig
from stages.motionmnist.seqvae import SequentialVAE

PARAMS = Path("params.yaml")
FRAMES, SIDE = 20, 64  # MotionMNIST videos
GAMEPLAY_STEPS = 45  # a 90-frame clip at frame_stride 2
Step = Callable[[], object]


def section(module, name: str):
    return load_section(module.Params, name, PARAMS, {})


def descend(optimiser: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()


def place(model: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    return training.to_device(model, "cpu") if channels_last else model.to("cpu")


def uint8_videos(batch: int, side: int) -> torch.Tensor:
    return torch.randint(0, 256, (batch, FRAMES, side, side), dtype=torch.uint8)


def cae_step(channels_last: bool) -> Step:
    p = section(cae_train, "cae_train")
    config = CAEConfig(size=128, channels=tuple(p.model_config.channels), bottleneck=128)
    model = place(CAE(config), channels_last)
    optimiser = torch.optim.Adam(model.parameters(), p.lr)
    frames = torch.randint(0, 256, (p.batch, 128, 128, 3), dtype=torch.uint8)

    def step() -> None:
        x = cae_train.to_input(frames)
        descend(optimiser, torch.mean((model(x) - x) ** 2))

    return step


def mdbigan_step(channels_last: bool) -> Step:
    p = section(mdbigan_train, "mdbigan_train")
    size = SIDE // p.downsample
    model = MDBiGAN(MDBiGANConfig(frames=FRAMES, size=size, **dataclasses.asdict(p.model_config)))
    init_weights(model)
    place(model, channels_last)
    betas = (p.beta1, p.beta2)
    opt_d = torch.optim.Adam(model.discriminator_parameters(), p.lr, betas)
    opt_ge = torch.optim.Adam(model.generator_parameters(), p.lr, betas)
    videos, generator = uint8_videos(p.batch, size), torch.Generator().manual_seed(0)
    return lambda: mdbigan_train.train_step(
        model, to_video(videos), opt_d, opt_ge, image_frames=p.image_frames,
        latent_regression=p.latent_regression, noise=p.label_noise, generator=generator,
        autocast=lambda: torch.autocast("cpu", enabled=False),
    )  # fmt: skip


def seqvae_step(channels_last: bool) -> Step:
    p = section(seqvae_train, "seqvae_train")
    size = SIDE // p.downsample
    config = SeqVAEConfig(size=size, frames=FRAMES, **dataclasses.asdict(p.model_config))
    model = place(SequentialVAE(config), channels_last)
    opt_vae = torch.optim.Adam(model.vae_parameters(), p.lr)
    opt_adversary = torch.optim.Adam(model.adversary_parameters(), p.adversary_lr)
    videos, generator = uint8_videos(p.batch, size), torch.Generator().manual_seed(0)
    motion, digit = torch.randint(8, (p.batch,)), torch.randint(10, (p.batch,))
    return lambda: seqvae_train.train_step(
        model, seqvae_train.to_unit(videos), motion, digit, opt_vae, opt_adversary,
        kl_weight=1.0, adversarial=p.adversarial, generator=generator,
        autocast=lambda: torch.autocast("cpu", enabled=False),
    )  # fmt: skip


def dmm_step(channels_last: bool) -> Step:
    p = section(dmm_train, "dmm_train")
    size = SIDE // p.downsample
    model = place(DMM(DMMConfig(size=size, **dataclasses.asdict(p.model_config))), channels_last)
    optimiser = torch.optim.Adam(model.parameters(), p.lr)
    videos, generator = uint8_videos(p.batch, size), torch.Generator().manual_seed(0)

    def step() -> None:
        descend(optimiser, model.loss(dmm_train.to_unit(videos), 1.0, generator)[0])

    return step


def cmocogan_step(channels_last: bool) -> Step:
    p = section(cmocogan_train, "cmocogan_train")
    size = SIDE // p.downsample
    config = CMoCoGANConfig(frames=FRAMES, size=size, **dataclasses.asdict(p.model_config))
    model = CMoCoGAN(config)
    init_weights(model)
    place(model, channels_last)
    betas = (p.beta1, p.beta2)
    opt_d = torch.optim.Adam(model.discriminator_parameters(), p.lr, betas)
    opt_g = torch.optim.Adam(model.generator.parameters(), p.lr, betas)
    generator = torch.Generator().manual_seed(0)
    videos = uint8_videos(p.batch, size)[:, :: config.clip_stride]
    d, m = torch.randint(10, (p.batch,)), torch.randint(8, (p.batch,))

    def step() -> None:
        real = to_video(videos)
        picks = torch.randint(real.shape[1], (p.batch, p.image_frames), generator=generator)
        z_content, z_motion = model.generator.codes(d, m, generator)
        fake = model.generator.frames(z_content, z_motion[:, :: config.clip_stride])
        descend(opt_d, losses(model, real, fake.detach(), d, m, picks, p.weight_class, "d")["loss"])
        descend(opt_g, losses(model, real, fake, d, m, picks, p.weight_class, "g")["loss"])

    return step


class ThreeProductMTRNN(MTRNN):
    """The reference: each group's drive as its own product of the activities it hears."""

    def step(self, u, x, wiring=None):  # the fused step's signature; `wiring` unused
        c = self.config
        y = torch.tanh(u)
        fast, slow = y[:, c.io : c.io + c.fast], y[:, c.io + c.fast :]
        drive = torch.cat([
            self.to_io(torch.cat([x, fast], 1)),
            self.to_fast(torch.cat([x, fast, slow], 1)),
            self.to_slow(torch.cat([fast, slow], 1)),
        ], 1)  # fmt: skip
        return (1 - self.leak) * u + self.leak * drive


def mtrnn_step(fused: bool, clips: int = 32) -> Step:
    p = section(mtrnn_train, "mtrnn_train")
    config = MTRNNConfig(io=128, **dataclasses.asdict(p.model_config))
    torch.manual_seed(0)
    model = (MTRNN if fused else ThreeProductMTRNN)(config, sequences=clips)
    optimiser = torch.optim.Adam(model.parameters(), p.lr)
    sequences = torch.rand(clips, GAMEPLAY_STEPS, 128, generator=torch.Generator().manual_seed(0))
    sequences = sequences * 2 - 1
    lengths = torch.full((clips,), GAMEPLAY_STEPS)

    def step() -> None:
        outputs = model(sequences[:, :-1], model.initial_slow, feedback=p.feedback)
        descend(optimiser, prediction_loss(outputs, sequences[:, 1:], lengths))

    return step


def same_mtrnn_outputs() -> float:
    """Largest output difference of the two MTRNN steps with the same weights (a closed loop)."""
    config = MTRNNConfig(io=128)
    ours = MTRNN(config, sequences=4)
    reference = ThreeProductMTRNN(config, sequences=4)
    reference.load_state_dict(ours.state_dict())
    first = torch.rand(4, 128) * 2 - 1
    with torch.no_grad():
        cs0 = torch.randn(4, config.slow)
        a, b = (
            ours.generate(first, cs0, GAMEPLAY_STEPS),
            reference.generate(first, cs0, GAMEPLAY_STEPS),
        )
    return float((a - b).abs().max())


FAMILIES: dict[str, Callable[[bool], Step]] = {
    "cae": cae_step,
    "mdbigan": mdbigan_step,
    "seqvae": seqvae_step,
    "dmm": dmm_step,
    "cmocogan": cmocogan_step,
    "mtrnn": mtrnn_step,
}


def seconds_per_step(step: Step, repeats: int) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7, help="alternating timings per side")
    parser.add_argument("--repeats", type=int, default=5, help="steps per timing")
    parser.add_argument("--out", type=Path, help="also write the figures here (JSON)")
    args = parser.parse_args()
    threads = section(seqvae_train, "seqvae_train").threads
    torch.set_num_threads(threads)
    print(f"{threads} torch threads; MTRNN fused vs three products: max |diff| "
          f"{same_mtrnn_outputs():.1e}")  # fmt: skip
    results = {}
    for name, make in FAMILIES.items():
        steps = {"reference": make(False), "ours": make(True)}
        for step in steps.values():  # warm-up: first-call allocations, oneDNN primitive caches
            step()
        times: dict[str, list[float]] = {side: [] for side in steps}
        for _ in range(args.rounds):
            for side, step in steps.items():
                times[side].append(seconds_per_step(step, args.repeats))
        median = {side: statistics.median(t) for side, t in times.items()}
        saved = 1 - median["ours"] / median["reference"]
        results[name] = {
            "reference_ms": round(1000 * median["reference"], 1),
            "ours_ms": round(1000 * median["ours"], 1),
            "time_saved": round(saved, 3),
        }
        print(f"{name:9s} reference {1000 * median['reference']:7.1f} ms/step   "
              f"ours {1000 * median['ours']:7.1f} ms/step   {saved:+.0%} time saved")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
