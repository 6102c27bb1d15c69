"""Can the gameplay models (seed 000's CAE and MTRNN) train in bf16 on one GPU? Speed and loss.

The `cae_train` stage already trains under bf16 autocast on cuda; `mtrnn_train` stays fp32 on an
unmeasured worry ("BPTT through 70-step leaks"). This trains both with the stages' own modules,
params and losses, fp32 against bf16 autocast from the same seed and initial weights, and reports
the speed and whether bf16 still reaches the fp32 loss:

- CAE (params.yaml cae_train): every `frame_stride`-th frame of the train split resident on the
  GPU, the stage's batch order (`training.batch_indices`, precomputed so that host RNG stays out
  of the timing), `--cae-steps` steps at `--cae-batch`; runs alternate fp32, bf16, fp32, ...
  Per run: frames/s over the steps after `--warmup`, the training MSE (mean of the last
  `log_every` steps, as the stage logs it) and the final model's MSE over all those frames
  evaluated in fp32, so bf16 harm shows in the model, not in the arithmetic that measures it.
- MTRNN (params.yaml mtrnn_train, `feedback` included: closed-loop training): the CAE features
  (`feature_sequences`, models/cae.pt) of the train clips, full-batch BPTT for `--mtrnn-steps`
  steps, the fp32 model and the bf16-autocast model trained in lockstep (one step of each, in
  turn, each timed between synchronisations), so both always stand at the same step and a
  deadline cuts both at once. Per repeat: steps/s, the next-step loss every `--log-every` steps,
  and the final loss both in the run's own precision and re-evaluated in fp32; the bf16/fp32
  ratio of the final losses and their absolute difference. A second repeat repeats the fp32 run
  exactly, so the fp32-vs-fp32 difference gives the noise floor for the bf16-vs-fp32 one.

Under autocast only the matrix products run in bf16: the leaky states u stay fp32 (fp32 leak *
bf16 drive promotes), so what bf16 costs the MTRNN is the rounding of each step's drive.

    python benchmarks/gameplay_gpu.py --out reports/gameplay/gpu_benchmark.json

Needs a CUDA GPU; refuses without one. `--time-limit` bounds the whole run: CAE repeats and MTRNN
steps that would pass it are skipped (and said so in the JSON, which is rewritten after every
run, so a killed run still leaves its results). Sizing: on the H200 machine the MTRNN step is
host-bound (~44 time steps of small kernels), about 17.5 steps/s per precision, so one lockstep
repeat of 3000 steps takes ~345 s; the default 220 s reaches ~1500 steps and one repeat. The CAE
runs ~4000-6000 frames/s at batch 32.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

try:  # only the audio MTRNN's sound features use librosa, which the GPU image may lack
    import librosa  # noqa: F401
except ImportError:
    sys.modules["librosa"] = types.ModuleType("librosa")

from stages.common import training
from stages.common.params import load_section
from stages.gameplay.cae import CAE
from stages.gameplay.cae import Config as CAEConfig
from stages.gameplay.cae_train import ROWS_STREAM, to_input, training_frames
from stages.gameplay.cae_train import Params as CAEParams
from stages.gameplay.mtrnn import MTRNN, prediction_loss
from stages.gameplay.mtrnn import Config as MTRNNConfig
from stages.gameplay.mtrnn_train import Params as MTRNNParams
from stages.gameplay.mtrnn_train import feature_sequences, load_cae

PRECISIONS = ("fp32", "bf16")


def autocast(precision: str) -> torch.autocast:
    return torch.autocast("cuda", torch.bfloat16, enabled=precision == "bf16")


def sync_clock() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


# --- CAE -------------------------------------------------------------------------------------


def cae_eval_mse(model: CAE, frames: torch.Tensor, chunk: int = 256) -> float:
    """Mean squared reconstruction error over all `frames`, in fp32 (no autocast)."""
    model.eval()
    total = torch.zeros((), device=frames.device, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(frames), chunk):
            x = to_input(frames[start : start + chunk])
            total += F.mse_loss(model(x), x, reduction="sum").double()
    model.train()
    return (total / (frames.numel())).item()


def cae_run(
    frames: torch.Tensor,
    order: torch.Tensor,
    config: CAEConfig,
    params: CAEParams,
    precision: str,
    warmup: int,
) -> dict[str, float]:
    """Train a fresh CAE (seeded init) over the batches in `order` (steps, batch) as the stage
    does; time the steps after `warmup`."""
    torch.manual_seed(params.seed)
    model = CAE(config).cuda()
    optimiser = torch.optim.Adam(model.parameters(), params.lr)
    losses = torch.zeros(len(order), device="cuda")
    started = sync_clock()
    for step, idx in enumerate(order):
        if step == warmup:
            started = sync_clock()
        x = to_input(frames[idx])
        with autocast(precision):
            loss = F.mse_loss(model(x).float(), x)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses[step] = loss.detach()
    seconds = sync_clock() - started
    timed = len(order) - warmup
    return {
        "frames_per_s": timed * order.shape[1] / seconds,
        "train_mse": losses[-params.log_every :].mean().item(),
        "eval_mse_fp32": cae_eval_mse(model, frames),
        "finite": bool(torch.isfinite(losses).all()),
    }


# --- MTRNN -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Learner:
    """One MTRNN with its optimiser and precision, trained step by step."""

    precision: str
    model: MTRNN
    optimiser: torch.optim.Optimizer
    losses: list[torch.Tensor] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    timed_steps: int = 0


def mtrnn_loss(
    model: MTRNN,
    sequences: torch.Tensor,
    lengths: torch.Tensor,
    feedback: float,
    precision: str,
) -> torch.Tensor:
    """The stage's objective: next-step MSE over the real steps, all clips at once."""
    with autocast(precision):
        outputs = model(sequences[:, :-1], model.initial_slow, feedback=feedback)
    return prediction_loss(outputs.float(), sequences[:, 1:], lengths)


def mtrnn_repeat(
    init: dict[str, torch.Tensor],
    config: MTRNNConfig,
    sequences: torch.Tensor,
    lengths: torch.Tensor,
    params: MTRNNParams,
    steps: int,
    warmup: int,
    deadline: float,
) -> dict[str, Any]:
    """fp32 and bf16 MTRNNs from the same `init`, trained in lockstep for `steps` full-batch
    steps or until `deadline` (perf_counter); each step timed between synchronisations."""
    learners = []
    for precision in PRECISIONS:
        model = MTRNN(config, sequences=len(sequences)).cuda()
        model.load_state_dict(init)
        learners.append(Learner(precision, model, torch.optim.Adam(model.parameters(), params.lr)))
    done = 0
    for step in range(steps):
        if time.perf_counter() > deadline:
            break
        for learner in learners:
            before = sync_clock()
            loss = mtrnn_loss(learner.model, sequences, lengths, params.feedback, learner.precision)
            learner.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            learner.optimiser.step()
            learner.losses.append(loss.detach())  # the loss of the weights after `step` updates
            if step >= warmup:
                learner.seconds += sync_clock() - before
                learner.timed_steps += 1
        done = step + 1
    result: dict[str, Any] = {"steps": done, "stopped_by_deadline": done < steps}
    for learner in learners:
        model = learner.model
        with torch.no_grad():
            final = mtrnn_loss(model, sequences, lengths, params.feedback, learner.precision)
            final_fp32 = mtrnn_loss(model, sequences, lengths, params.feedback, "fp32")
        curve = torch.stack(learner.losses).tolist() if learner.losses else []
        result[learner.precision] = {
            "steps_per_s": learner.timed_steps / learner.seconds if learner.seconds else math.nan,
            "final_loss": final.item(),  # after `done` updates, in the run's own precision
            "final_loss_fp32_eval": final_fp32.item(),
            "finite": all(math.isfinite(v) for v in curve) and math.isfinite(final.item()),
            "curve": curve,  # every step; thinned in the JSON
        }
    return result


def thin(curve: list[float], every: int, final: float) -> list[list[float]]:
    """[step, loss] every `every` steps, and the final loss after the last update."""
    return [[s, curve[s]] for s in range(0, len(curve), every)] + [[len(curve), final]]


# --- driver ----------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    matmul = torch.backends.cuda.matmul
    return {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
        # "fp32" convolutions may run as TF32 (cuDNN's default); fp32 matmuls do unless disabled
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }


def summarise_cae(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        p: {
            k: median([r[k] for r in runs[p]])
            for k in ("frames_per_s", "train_mse", "eval_mse_fp32")
        }
        for p in PRECISIONS
        if runs[p]
    }
    if len(out) == 2:
        out["speedup_bf16"] = out["bf16"]["frames_per_s"] / out["fp32"]["frames_per_s"]
        out["eval_mse_ratio_bf16_fp32"] = (
            out["bf16"]["eval_mse_fp32"] / out["fp32"]["eval_mse_fp32"]
        )
        out["train_mse_ratio_bf16_fp32"] = out["bf16"]["train_mse"] / out["fp32"]["train_mse"]
    if len(runs["fp32"]) > 1:  # the same fp32 run again: run-to-run noise alone
        fp32 = [r["eval_mse_fp32"] for r in runs["fp32"]]
        out["fp32_repeat_spread_eval_mse"] = max(fp32) - min(fp32)
    return out


def summarise_mtrnn(repeats: list[dict[str, Any]], every: int) -> dict[str, Any]:
    if not repeats:
        return {}
    out: dict[str, Any] = {}
    for p in PRECISIONS:
        out[p] = {
            "steps_per_s": median([r[p]["steps_per_s"] for r in repeats]),
            "final_loss": median([r[p]["final_loss"] for r in repeats]),
            "final_loss_fp32_eval": median([r[p]["final_loss_fp32_eval"] for r in repeats]),
            "finite": all(r[p]["finite"] for r in repeats),
        }
    first = repeats[0]
    out["steps_first_repeat"] = first["steps"]
    out["speedup_bf16"] = out["bf16"]["steps_per_s"] / out["fp32"]["steps_per_s"]
    out["final_loss_ratio_bf16_fp32"] = out["bf16"]["final_loss"] / out["fp32"]["final_loss"]
    out["final_loss_fp32_eval_ratio_bf16_fp32"] = (
        out["bf16"]["final_loss_fp32_eval"] / out["fp32"]["final_loss_fp32_eval"]
    )
    out["final_loss_max_abs_diff"] = max(
        abs(r["bf16"]["final_loss"] - r["fp32"]["final_loss"]) for r in repeats
    )
    out["curve_max_abs_diff"] = (
        max(
            max(abs(a - b) for a, b in zip(r["bf16"]["curve"], r["fp32"]["curve"], strict=True))
            for r in repeats
            if r["fp32"]["curve"]
        )
        if first["fp32"]["curve"]
        else math.nan
    )
    if len(repeats) > 1:  # the same fp32 run again: how far run-to-run noise alone moves it
        common = min(len(r["fp32"]["curve"]) for r in repeats)
        out["fp32_repeat_curve_max_abs_diff"] = max(
            abs(r["fp32"]["curve"][s] - first["fp32"]["curve"][s])
            for r in repeats[1:]
            for s in range(common)
        )
    fp32, bf16 = first["fp32"], first["bf16"]
    out["curve_first_repeat"] = [
        {"step": s, "fp32": a, "bf16": b, "ratio": b / a}
        for (s, a), (_, b) in zip(
            thin(fp32["curve"], every, fp32["final_loss"]),
            thin(bf16["curve"], every, bf16["final_loss"]),
            strict=True,
        )
    ]
    return out


def print_table(report: dict[str, Any]) -> None:
    env, cae, mtrnn = report["environment"], report["cae"]["median"], report["mtrnn"]["median"]
    print(f"\n{env['gpu']}, torch {env['torch']}")
    c = report["cae"]["setup"]
    print(f"CAE: batch {c['batch']}, {c['steps']} steps, {c['repeats_done']} repeats (medians)")
    print(f"{'':6} {'frames/s':>10} {'train MSE':>11} {'MSE (fp32 eval)':>16}")
    for p in PRECISIONS:
        if p in cae:
            r = cae[p]
            print(
                f"{p:6} {r['frames_per_s']:10.0f} {r['train_mse']:11.5f} {r['eval_mse_fp32']:16.5f}"
            )
    if "speedup_bf16" in cae:
        print(
            f"bf16/fp32: speed {cae['speedup_bf16']:.2f}x, "
            f"MSE (fp32 eval) {cae['eval_mse_ratio_bf16_fp32']:.3f}x"
        )
    if not mtrnn:
        return
    m = report["mtrnn"]["setup"]
    print(
        f"\nMTRNN: {m['clips']} clips x {m['time_steps']} steps, feedback {m['feedback']}, "
        f"{mtrnn['steps_first_repeat']} BPTT steps, {m['repeats_done']} repeats (medians)"
    )
    print(f"{'':6} {'steps/s':>10} {'final loss':>12} {'(fp32 eval)':>12}")
    for p in PRECISIONS:
        r = mtrnn[p]
        print(
            f"{p:6} {r['steps_per_s']:10.1f} {r['final_loss']:12.3e} "
            f"{r['final_loss_fp32_eval']:12.3e}"
        )
    print(
        f"bf16/fp32: speed {mtrnn['speedup_bf16']:.2f}x, final loss "
        f"{mtrnn['final_loss_ratio_bf16_fp32']:.3f}x (max |diff| "
        f"{mtrnn['final_loss_max_abs_diff']:.2e})"
    )
    print(f"{'step':>6} {'fp32':>11} {'bf16':>11} {'ratio':>7}")
    for point in mtrnn["curve_first_repeat"]:
        print(
            f"{point['step']:6d} {point['fp32']:11.3e} {point['bf16']:11.3e} {point['ratio']:7.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--cae-steps", type=int, default=600)
    parser.add_argument("--cae-batch", type=int, help="frames per step (default: cae_train.batch)")
    parser.add_argument("--cae-repeats", type=int, default=3)
    parser.add_argument("--mtrnn-steps", type=int, default=3000)
    parser.add_argument("--mtrnn-repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps at each run's start")
    parser.add_argument("--log-every", type=int, default=250, help="MTRNN loss curve spacing")
    parser.add_argument("--time-limit", type=float, default=220.0, help="seconds for everything")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    deadline = started + args.time_limit
    if not torch.cuda.is_available():
        sys.exit("gameplay_gpu: needs a CUDA GPU (run it on the GPU machine)")
    if min(args.cae_steps, args.mtrnn_steps) <= args.warmup or args.log_every < 1:
        sys.exit("gameplay_gpu: --cae-steps and --mtrnn-steps must exceed --warmup")

    cae_params = load_section(CAEParams, "cae_train", args.params)
    mtrnn_params = load_section(MTRNNParams, "mtrnn_train", args.params)
    if mtrnn_params.audio is not None:
        sys.exit("gameplay_gpu: mtrnn_train.audio must be null (pictures only)")
    # the stages' footing on cuda: seeded, cudnn.benchmark on, nondeterministic kernels allowed
    device, _ = training.prepare_torch(cae_params.seed, "cuda", cae_params.threads, "cae_train")
    report: dict[str, Any] = {
        "environment": environment(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "complete": False,
    }

    def dump() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")

    # CAE: runs alternate fp32, bf16; the same seed, init and batches in every run
    frames = torch.from_numpy(training_frames(cae_params.clips, cae_params.frame_stride)).to(device)
    batch = args.cae_batch or cae_params.batch
    order = np.stack([
        training.batch_indices(cae_params.seed, ROWS_STREAM, s, len(frames), batch)
        for s in range(args.cae_steps)
    ])  # fmt: skip
    order_t = torch.from_numpy(order).to(device)
    mc = cae_params.model_config
    cae_config = CAEConfig(
        size=frames.shape[1], channels=tuple(mc.channels), bottleneck=mc.bottleneck
    )
    cae_runs: dict[str, list[dict[str, float]]] = {p: [] for p in PRECISIONS}
    report["cae"] = {
        "setup": {
            "frames": len(frames), "batch": batch, "steps": args.cae_steps,
            "config": dataclasses.asdict(cae_config), "lr": cae_params.lr, "repeats_done": 0,
        },
        "runs": cae_runs,
    }  # fmt: skip
    cae_seconds = 0.0
    for repeat in range(args.cae_repeats):
        if repeat and time.perf_counter() + cae_seconds / repeat > started + 0.25 * args.time_limit:
            break  # the CAE gets a quarter of the time; the MTRNN is the question
        before = time.perf_counter()
        for p in PRECISIONS:
            cae_runs[p].append(cae_run(frames, order_t, cae_config, cae_params, p, args.warmup))
            print("cae", p, repeat, cae_runs[p][-1], flush=True)
        cae_seconds += time.perf_counter() - before
        report["cae"]["setup"]["repeats_done"] = repeat + 1
        report["cae"]["median"] = summarise_cae(cae_runs)
        dump()
    del frames, order_t

    # MTRNN: CAE features of the train clips; one init shared by every run
    cae = load_cae(mtrnn_params.cae, device)
    rows = training.load_split(mtrnn_params.clips, "train", ["frames", "n_frames"])
    sequences, lengths = feature_sequences(cae, rows, mtrnn_params.frame_stride, device)
    del cae, rows
    config = MTRNNConfig(io=sequences.shape[2], **dataclasses.asdict(mtrnn_params.model_config))
    torch.manual_seed(mtrnn_params.seed)
    init = {k: v.clone() for k, v in MTRNN(config, sequences=len(sequences)).state_dict().items()}
    repeats: list[dict[str, Any]] = []
    report["mtrnn"] = {
        "setup": {
            "clips": len(sequences), "time_steps": sequences.shape[1] - 1,
            "config": dataclasses.asdict(config), "feedback": mtrnn_params.feedback,
            "lr": mtrnn_params.lr, "steps": args.mtrnn_steps, "repeats_done": 0,
        },
        "median": {},
        "runs": [],
    }  # fmt: skip
    for repeat in range(args.mtrnn_repeats):
        if repeat and time.perf_counter() > deadline - 10:
            break
        result = mtrnn_repeat(
            init, config, sequences, lengths, mtrnn_params, args.mtrnn_steps, args.warmup, deadline
        )
        repeats.append(result)
        print(
            "mtrnn", repeat, result["steps"], "steps",
            {p: {k: v for k, v in result[p].items() if k != "curve"} for p in PRECISIONS},
            flush=True,
        )  # fmt: skip
        report["mtrnn"]["setup"]["repeats_done"] = repeat + 1
        report["mtrnn"]["median"] = summarise_mtrnn(repeats, args.log_every)
        report["mtrnn"]["runs"] = [
            {
                "steps": r["steps"], "stopped_by_deadline": r["stopped_by_deadline"],
                **{p: {
                    **{k: v for k, v in r[p].items() if k != "curve"},
                    "curve": thin(r[p]["curve"], args.log_every, r[p]["final_loss"]),
                } for p in PRECISIONS},
            }
            for r in repeats
        ]  # fmt: skip
        dump()
    report["complete"] = True
    report["seconds"] = time.perf_counter() - started
    dump()
    print_table(report)


if __name__ == "__main__":
    main()
