"""What every training family shares, and nothing else (../shared/design/training.md).

The loops themselves live beside their models (`stages/<area>/train.py`): they differ too much to
share. This module gives them the same footing:

- `prepare_torch`: seeded, deterministic torch on the device the params ask for, pinned threads;
- `to_device`: a model on its device, its 2-D convolutions in the fast (channels-last) layout;
- `load_splits` / `batch_indices`: the rows of one split of a sample dataset (small enough here
  to live on the device, so the GPU never waits for a loader), and the batch of any step from a
  named, epoch-keyed random stream, so the order depends on neither worker count nor resume
  point;
- `save_model` / `load_model`: atomic model files that rebuild their model alone, refused in one
  line when corrupt or mismatched;
- `provenance` (input DVC hashes, code digest, resume fingerprint), `model_record`,
  `save_resume` / `load_resume`: resume state used only when the params section, the input
  hashes and the code digest all match;
- `open_live`: DVCLive set up the project's way, trimmed back to the resume point;
- `LogWindow` (a loop's values, logged as their means every N steps) and `finish` (the model
  saved, the curves closed, the run-log timings): the tail every training loop shares.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from threadpoolctl import threadpool_limits

from stages.common import dataset
from stages.common.atomic import atomic_file
from stages.common.closure import code_digest
from stages.common.device import device_record, resolve_device
from stages.common.errors import StageError
from stages.common.hashing import file_digest
from stages.common.seeding import rng, seed_torch

log = logging.getLogger(__name__)
if TYPE_CHECKING:
    from torch import nn

C = TypeVar("C")
M = TypeVar("M", bound="nn.Module")


def prepare_torch(seed: int, device: str, threads: int, key: str) -> tuple[Any, dict[str, str]]:
    """Seed torch, pin its CPU threads (float sums depend on the split), pick the device.

    Returns the torch device and its record (device, GPU name, precision) for the model file.
    """
    import torch

    if threads < 1:
        raise StageError(f"params.yaml: {key}.threads", f"must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    # scikit-learn's and numpy's BLAS / OpenMP pools as wide as torch's: unbounded, two stages
    # side by side on a 16-core GPU machine spun each other's threads past a 170 s limit
    threadpool_limits(threads)
    seed_torch(seed)
    name = resolve_device(device, f"{key}.device")
    record = device_record(name) | {"precision": "bf16-autocast" if name == "cuda" else "fp32"}
    if name == "cuda":
        # On the GPU the promise is "the same within tolerance", not bytes (training.md): let
        # cuDNN pick its fastest kernels, which deterministic mode would forbid.
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True
        record["deterministic"] = "no"
    return torch.device(name), record


def to_device(model: M, device: Any) -> M:
    """`model` on `device`, each 2-D convolution's weight channels-last (NHWC).

    The layout oneDNN and cuDNN run fastest: a convolution's output follows its weight's layout,
    so whole conv stacks run in it. On 2 CPU cores it saves 17-25% of a training step of the CAE,
    the sequential VAE, the DMM and the conditional MoCoGAN (`benchmarks/training_cpu.py`), not
    of MDBiGAN, whose convolutions are too narrow to gain (it stays NCHW). 3-D convolutions stay
    NCDHW: channels_last_3d made MDBiGAN's step 25% slower.
    """
    import torch
    from torch import nn

    model.to(device)
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            module.to(memory_format=torch.channels_last)
    return model


def load_splits(
    directory: str | Path, splits: Sequence[str], columns: Sequence[str]
) -> dict[str, dict[str, np.ndarray]]:
    """The rows of each of `splits` (the data stage's `split` column), as numpy columns, in one
    pass over the dataset."""
    parts = {s: {c: [] for c in columns} for s in splits}
    for batch in dataset.iter_batches(directory, [*columns, "split"]):
        for split in splits:
            keep = batch["split"] == split
            for column in columns:
                parts[split][column].append(batch[column][keep])
    found = {s: {c: np.concatenate(v) for c, v in cols.items()} for s, cols in parts.items()}
    for split, rows in found.items():
        if len(rows[columns[0]]) == 0:
            raise StageError(directory, f"no rows in the {split!r} split")
    return found


def load_split(directory: str | Path, split: str, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """The rows of one `split` of a sample dataset (see `load_splits`)."""
    return load_splits(directory, [split], columns)[split]


def batch_indices(seed: int, stream: str, step: int, rows: int, batch: int) -> np.ndarray:
    """Row indices of training step `step`: epoch `e` is a permutation from stream (seed, stream,
    e), cut into `rows // batch` batches (the incomplete last one dropped). A function of the
    step alone, so resuming at any step replays exactly the batches an unbroken run would see."""
    if not 0 < batch <= rows:
        raise ValueError(f"batch {batch} must be 1..{rows} (the rows); check it against the data")
    per_epoch = rows // batch
    epoch, index = divmod(step, per_epoch)
    order = rng(seed, stream, "epoch", epoch).permutation(rows)
    return order[index * batch : (index + 1) * batch]


def dvc_md5(path: str | Path) -> str:
    """DVC 3's hash of a file (md5 of its bytes) or directory (`<md5 of its listing>.dir`)."""
    path = Path(path)
    if path.is_file():
        return file_digest(path, "md5")
    if not path.is_dir():
        raise StageError(path, "input not found (run its stage first: dvc repro)")
    listing = [
        {"md5": file_digest(f, "md5"), "relpath": f.relative_to(path).as_posix()}
        for f in sorted(path.rglob("*"))
        if f.is_file()
    ]
    listing.sort(key=lambda entry: entry["relpath"])
    return hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest() + ".dir"


# Changing these continues a run instead of invalidating it: more steps, another checkpoint cadence.
RESUMABLE_CHANGES = ("steps", "checkpoint_every")


@dataclasses.dataclass(frozen=True)
class Provenance:
    """What a training run is a function of: its inputs' DVC hashes and its code's digest, and
    the fingerprint its resume state must match."""

    inputs: dict[str, str]
    code: str
    fingerprint: str


def provenance(params: Any, module: str, inputs: Sequence[str | Path]) -> Provenance:
    """Hash a training stage's `inputs`, digest `module`'s import closure, and fingerprint them
    with its params (a dataclass; `RESUMABLE_CHANGES` left out)."""
    hashes = {str(path): dvc_md5(path) for path in inputs}
    code = code_digest(module)
    kept = {k: v for k, v in dataclasses.asdict(params).items() if k not in RESUMABLE_CHANGES}
    return Provenance(hashes, code, fingerprint(kept, hashes, code))


def model_record(
    state_dict: Mapping[str, Any], config: Any, step: int, source: Provenance, **extra: Any
) -> dict[str, Any]:
    """A model file's record: CPU copies of the weights, the config, the step, the provenance."""
    return {
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "config": dataclasses.asdict(config),
        "step": step,
        "inputs": source.inputs,
        "code": source.code,
        **extra,
    }


def fingerprint(params: Mapping[str, Any], inputs: Mapping[str, str], code: str) -> str:
    """What resume state must match: the params that shape training (a mapping, so the caller
    leaves out what may change between runs, like the number of steps), the input hashes and
    the code digest."""
    blob = json.dumps(
        {"params": dict(params), "inputs": dict(inputs), "code": code},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def save_model(path: str | Path, record: Mapping[str, Any]) -> None:
    """Write a model file atomically: {"state_dict", "config", "inputs", "code", "step", ...}."""
    import torch

    missing = {"state_dict", "config", "inputs", "code", "step"} - set(record)
    if missing:
        raise ValueError(f"model record lacks {sorted(missing)}")
    with atomic_file(path) as handle:
        torch.save(dict(record), handle)


def load_model(path: str | Path, config_type: type[C]) -> tuple[C, dict[str, Any]]:
    """Read a model file; its config rebuilt as `config_type`. Anything off is one StageError."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise StageError(path, "model file not found (run its training stage first: dvc repro)")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged zip or pickle
        raise StageError(path, f"not a readable model file ({type(exc).__name__})") from None
    if not isinstance(record, dict) or not {"state_dict", "config"} <= set(record):
        raise StageError(path, "not a model file of this project (no state_dict and config)")
    fields = {f.name for f in dataclasses.fields(config_type)}  # type: ignore[arg-type]
    config = record["config"]
    if not isinstance(config, dict) or set(config) != fields:
        raise StageError(path, f"config does not match {config_type.__name__}: {config!r}")
    return config_type(**config), record


def load_state(path: str | Path, module: Any, state_dict: Mapping[str, Any]) -> None:
    """`module.load_state_dict` with a mismatch reported as one line naming the file."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise StageError(path, f"weights do not fit the model: {first[-1].strip()}") from None


def save_resume(path: str | Path, state: Mapping[str, Any]) -> None:
    """Atomically write resume state (models, optimizers, step, RNG states, fingerprint)."""
    import torch

    with atomic_file(path) as handle:
        torch.save(dict(state), handle)


def load_resume(path: str | Path, expected: str) -> dict[str, Any] | None:
    """Resume state whose fingerprint matches `expected`; otherwise None, and say why."""
    import torch

    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        log.warning("%s: unreadable (%s); training starts fresh", path, type(exc).__name__)
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != expected:
        log.warning("%s: params, inputs or code changed since; training starts fresh", path)
        return None
    log.info("%s: resuming at step %d", path, state["step"])
    return state


def open_live(directory: str | Path, resume_step: int | None) -> Any:
    """DVCLive in `directory`, no dvc.yaml or experiment of its own (dvc.yaml declares it).

    Fresh (`resume_step` None): the directory is cleared. Resuming: rows logged after the resume
    point by the interrupted run are dropped first (the resume point's own row is kept: the loops
    log it before checkpointing and never again), so the curves hold each step once.
    """
    from dvclive import Live

    class StageLive(Live):
        """Live without its DVC repository hook-up. Even with save_dvc_exp=False and
        dvcyaml=False, Live opens the DVC repo (and outside one runs `dvc init`), which needs
        DVC's git stack: absent on a bare GPU machine, and of no use here, since the stage's
        dvc.yaml entry declares these outputs. (DVCLIVE_TEST mode crashes on dvcyaml=False.)"""

        def _init_dvc(self) -> None:
            pass

    directory = Path(directory)
    if resume_step is not None:
        for tsv in (directory / "plots" / "metrics").rglob("*.tsv"):
            lines = tsv.read_text().splitlines(keepends=True)
            step = lines[0].rstrip("\n").split("\t").index("step")
            # the loops resume at the step after `resume_step`, so its own row stays
            kept = [lines[0]] + [ln for ln in lines[1:] if int(ln.split("\t")[step]) <= resume_step]
            with atomic_file(tsv, "w") as handle:
                handle.writelines(kept)
    live = StageLive(
        str(directory), resume=resume_step is not None, save_dvc_exp=False, dvcyaml=False
    )
    live.step = resume_step or 0
    return live


class LogWindow:
    """A training loop's logged values, summed on the device and written to DVCLive as their
    means every `every` steps (reading a GPU value waits for the GPU, so only then).

    `state()` belongs in the resume state: a window half done when a run stopped resumes where it
    was, so the resumed curve is the unbroken one.
    """

    def __init__(self, live: Any, every: int, state: Mapping[str, Any] | None, device: Any) -> None:
        self.live, self.every = live, every
        self.sums = {key: value.to(device) for key, value in (state or {}).items()}

    def add(self, done: int, values: Mapping[str, Any]) -> None:
        """One step's values (detached tensors), then, after step `done`, the means if due."""
        for key, value in values.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        if done % self.every == 0:
            self.live.step = done
            for key, total in self.sums.items():
                self.live.log_metric(f"train/{key}", total.item() / self.every)
            self.sums = {}
            self.live.make_summary()

    def state(self) -> dict[str, Any]:
        return {key: value.cpu() for key, value in self.sums.items()}


def finish(
    path: str | Path,
    record: Mapping[str, Any],
    live: Any,
    started: float,
    start: int,
    steps: int,
    per_step: int,
    unit: str,
) -> dict[str, Any]:
    """Save the model file, close the curves; the run log's timings: seconds since `started`,
    `unit`s per second over the steps trained (`per_step` a step), the step resumed at."""
    seconds = time.perf_counter() - started
    save_model(path, record)
    live.end()
    return {
        "train_seconds": round(seconds, 2),
        f"{unit}_per_s": round((steps - start) * per_step / max(seconds, 1e-9), 1),
        "resumed_at": start,
    }
