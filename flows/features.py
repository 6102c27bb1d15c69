"""Prefect flow: the MCN feature stages' shards mapped over a Dask cluster (prefect-dask).

The flow never reimplements a stage: per stage it calls the stage module's own `prepare`, the
shared `mcn_corpus.plan`, the module's `run_shard` (one Prefect task per shard, on Dask workers)
and `finalize`, exactly what `dvc repro` runs one shard after another. So both write the same
files, and a shard already complete (same fingerprint) is skipped by either.

    python -m flows.features                              # temporary local cluster, 2 workers
    python -m flows.features --address tcp://sched:8786   # an existing Dask cluster
    python -m flows.features --workers 8 --gpus-per-worker 1 --stages video_features
    python -m flows.features --dashboard                  # Dask dashboard on 127.0.0.1:8787

With `--gpus-per-worker N`, local workers advertise N "GPU" Dask resources and each video shard
asks for one, so Dask runs at most one video shard per GPU; on an existing cluster start workers
with `dask worker ... --resources GPU=1` (each pinned to its GPU with CUDA_VISIBLE_DEVICES) and
pass `--gpus-per-worker 1` too: without it no shard asks for a GPU resource.
Outputs go to the paths of params.yaml, relative to the working directory: on a multi-host
cluster that must be a shared file system.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import time
from pathlib import Path
from typing import Any

import dask
from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect_dask import DaskTaskRunner

from stages.common.params import PARAMS_FILE, load_section
from stages.mcn import corpus as mcn_corpus

STAGES = ("video_features", "audio_features", "text_features")
GPU_STAGES = {"video_features"}


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def shard_task(stage: str, params: Any, context: Any, shard: mcn_corpus.Shard) -> dict:
    """One shard of one stage: the very function the DVC stage runs."""
    return importlib.import_module(f"stages.mcn.{stage}").run_shard(params, context, shard)


@flow(name="mcn-features")
def features_flow(
    stages: list[str] = list(STAGES),  # noqa: B006 (Prefect parameters are plain values)
    params_file: str = str(PARAMS_FILE),
    gpu_resources: bool = False,
) -> dict[str, dict]:
    """Plan, map the shards over the task runner, finalize; returns each stage's statistics."""
    results = {}
    for stage in stages:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r} (known: {', '.join(STAGES)})")
        module = importlib.import_module(f"stages.mcn.{stage}")
        params = load_section(module.Params, stage, Path(params_file))
        context = module.prepare(params)
        shards = mcn_corpus.plan(params.corpora, params.videos_per_shard)
        started = time.perf_counter()
        needs_gpu = gpu_resources and stage in GPU_STAGES
        with dask.annotate(resources={"GPU": 1}) if needs_gpu else contextlib.nullcontext():
            futures = shard_task.map(stage, unmapped(params), unmapped(context), shards)
        manifests = [f.result() for f in futures]
        results[stage] = module.finalize(params, context, manifests, time.perf_counter() - started)
    return results


def task_runner(
    address: str | None, workers: int, gpus_per_worker: int, dashboard: int | None = None
) -> DaskTaskRunner:
    """An existing cluster by address, else a temporary LocalCluster of worker processes.

    The local cluster listens on loopback only, and has no dashboard unless `dashboard` names a
    port: LocalCluster's default dashboard binds 0.0.0.0:8787, unauthenticated, for anyone who
    can reach the machine. Loopback is no user boundary on a shared machine, and whoever reaches
    a Dask scheduler runs code on its workers, so its connections are mutual TLS with temporary
    credentials that only this process and its workers hold (`security=True`).
    """
    if address:
        return DaskTaskRunner(address=address)
    cluster: dict[str, Any] = {
        "n_workers": workers,
        "threads_per_worker": 1,
        "processes": True,
        "host": "127.0.0.1",
        "security": True,
        "dashboard_address": None if dashboard is None else f"127.0.0.1:{dashboard}",
    }
    if gpus_per_worker:
        cluster["resources"] = {"GPU": gpus_per_worker}
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=cluster)


def run(
    stages: list[str] | None = None,
    params_file: str = str(PARAMS_FILE),
    address: str | None = None,
    workers: int = 2,
    gpus_per_worker: int = 0,
    dashboard: int | None = None,
) -> dict[str, dict]:
    # Worker processes may start their own (the video stage's decode workers); Dask's default
    # daemonic workers may not, and the stage would fall back to decoding in-process.
    dask.config.set({"distributed.worker.daemon": False})
    runner = task_runner(address, workers, gpus_per_worker, dashboard)
    return features_flow.with_options(task_runner=runner)(
        stages=list(stages or STAGES),
        params_file=params_file,
        gpu_resources=bool(gpus_per_worker),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--params", default=str(PARAMS_FILE), help="params file (params.yaml)")
    parser.add_argument("--address", help="scheduler of an existing Dask cluster")
    parser.add_argument("--workers", type=int, default=2, help="local cluster worker processes")
    parser.add_argument("--gpus-per-worker", type=int, default=0, help="GPU resources per worker")
    parser.add_argument(
        "--dashboard", type=int, nargs="?", const=8787, metavar="PORT",
        help="serve the local cluster's Dask dashboard on 127.0.0.1:PORT (8787); default: none",
    )  # fmt: skip
    args = parser.parse_args()
    for stage, stats in run(
        args.stages, args.params, args.address, args.workers, args.gpus_per_worker, args.dashboard
    ).items():
        print(
            f"{stage}: {stats['rows']} rows, {stats['shards_skipped']}/{stats['shards']} "
            f"shards skipped, failures {stats['failures_by_kind']}"
        )


if __name__ == "__main__":
    main()
