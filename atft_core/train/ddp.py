"""Multi-process training with torch.distributed: ``atft train --nproc N`` / ``train.nproc``.

:func:`launch_train` starts N workers through torch's elastic launcher (the API behind
``torchrun``: a c10d rendezvous on 127.0.0.1, no restarts, so a dead rank ends the job and a
relaunch resumes from the last checkpoint). Each worker joins a process group (NCCL on GPUs, one
GPU per local rank; gloo on CPU) and runs :func:`atft_core.train.api.train_run` with a
:class:`DistContext`; the trainer then

* shards each global batch's days across ranks (contiguous shares, rank r gets
  ``day_bounds(K)[r]``), gathers the predictions so every rank computes the *whole batch's* loss
  (the cross-day Sharpe term included), back-propagates into its own rows only and sums the
  parameter gradients over ranks (one flat all-reduce per step): the update equals one process
  with the same global batch, up to float summation order;
* validates on rank 0 and broadcasts the metrics, so plateau, early stopping and the best epoch
  are the same decision on every rank;
* writes checkpoints, best weights and metrics.jsonl on rank 0 only; the checkpoint is the same
  for any N (model/optimizer state is replicated), so a run resumes with another N.

Decisions (the issue is silent): every rank builds the whole global batch (data loading is not
sharded; the model is the bottleneck, issue 15); dropout masks differ from one process (each rank
draws its own, seeded by rank), so equality with one process holds exactly only without dropout;
``grad_accum_days`` below the batch is refused with N > 1 (a rank's share is its micro-batch).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("atft.train")

# collectives (gradient all-reduce, the val broadcast while rank 0 validates) fail after this
COLLECTIVE_TIMEOUT_S = 1800.0
# torch.manual_seed(seed + RANK_SEED_STRIDE * rank + epoch) for ranks > 0
RANK_SEED_STRIDE = 1_000_003


def without_nproc(cfg):
    """``cfg`` with ``train.nproc`` = 1: what the launchers hand to the ranks and so what the run
    dir's config.yaml, metrics.json and weights record. The process count is how a run is
    launched, not what it trains, so a run resumed with another N keeps one config identity."""
    if getattr(cfg.train, "nproc", 1) == 1:
        return cfg
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"nproc": 1})})


def identity_sha256(cfg) -> str:
    """The config hash a checkpoint must match to be resumed: ``cfg.sha256()`` with
    ``train.nproc`` set to 1, because the process count does not change the objective."""
    return without_nproc(cfg).sha256()


def check_settings(cfg, nproc: int) -> None:
    """Refuse, before anything starts, what N processes cannot honour (ValueError, one line)."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    accum, days = cfg.train.grad_accum_days, cfg.dataset.days_per_batch
    if nproc > 1 and 0 < accum < days:
        raise ValueError(f"train.grad_accum_days={accum} is not supported with {nproc} processes: each "
                         "rank's share of the days is its micro-batch (use more processes, or grad_accum_days=0)")
    if nproc > 1 and cfg.train.device == "cuda" and nproc > torch.cuda.device_count():
        raise ValueError(f"nproc={nproc} but {torch.cuda.device_count()} GPUs are visible (one GPU per rank)")


@dataclass(frozen=True)
class DistContext:
    """Rank, world size and the collectives the trainer needs; ``world_size == 1`` is one
    process and every method is then a no-op."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device_for(self, device: torch.device) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.enabled and device.type == "cuda" else device

    def rank_seed(self, seed: int, epoch: int) -> int:
        return seed + RANK_SEED_STRIDE * self.rank + epoch

    def day_bounds(self, num_days: int) -> list[tuple[int, int]]:
        """Contiguous [lo, hi) day ranges per rank, sizes differ by at most one (the first
        ``num_days % world`` ranks get the extra day; trailing ranks may get none)."""
        base, extra = divmod(num_days, self.world_size)
        out, lo = [], 0
        for r in range(self.world_size):
            hi = lo + base + (1 if r < extra else 0)
            out.append((lo, hi))
            lo = hi
        return out

    # ------------------------------------------------------------------ collectives
    def all_gather_rows(self, own: torch.Tensor, rows: list[int]) -> list[torch.Tensor]:
        """Every rank's (rows[r], H) block; padded to the longest for the collective."""
        if not self.enabled:
            return [own]
        import torch.distributed as dist

        width = max(max(rows), 1)
        pad = own.new_zeros((width, *own.shape[1:]))
        pad[: own.shape[0]] = own
        bufs = [torch.empty_like(pad) for _ in range(self.world_size)]
        dist.all_gather(bufs, pad)
        return [b[:n] for b, n in zip(bufs, rows, strict=True)]

    def all_reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum the gradients over ranks in one flat all-reduce. A parameter no rank touched keeps
        ``grad=None`` (AdamW then skips it, as one process would); one touched anywhere gets the
        sum (zeros from the ranks that did not touch it)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        flats = [p.grad.reshape(-1).float() if p.grad is not None else p.new_zeros(p.numel(), dtype=torch.float32)
                 for p in params]
        present = torch.tensor([float(p.grad is not None) for p in params], device=flats[0].device)
        buf = torch.cat([*flats, present])
        dist.all_reduce(buf)
        sizes = [p.numel() for p in params]
        *chunks, seen = torch.split(buf, [*sizes, len(params)])
        for p, g, s in zip(params, chunks, seen.tolist(), strict=True):
            p.grad = g.view_as(p).to(p.dtype) if s > 0 else None

    def broadcast_parameters(self, model: torch.nn.Module) -> None:
        if not self.enabled:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                dist.broadcast(t.data, src=0)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's object on every rank."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()


SINGLE_PROCESS = DistContext()


# --------------------------------------------------------------------------- worker side
def init_distributed(device: str, timeout_s: float = COLLECTIVE_TIMEOUT_S) -> DistContext:
    """Join the process group torchrun / the elastic agent described in the environment
    (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); one process when WORLD_SIZE is unset or 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE_PROCESS
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"local rank {local} has no GPU ({torch.cuda.device_count()} visible); "
                               "use nproc <= the GPU count")
        torch.cuda.set_device(local)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=dt.timedelta(seconds=timeout_s))
    return DistContext(rank=rank, world_size=world, local_rank=local, backend=backend)


def launched_by_torchrun() -> bool:
    """True in a process that torchrun (or the elastic agent) started as one rank of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def _worker(cfg_yaml: str, run_dir: str, resume: bool, features_path: str | None,
            hook_factory: Callable[[Any], Callable[[dict], None]] | None,
            evaluate_holdout: bool = True, graph_store: str | None = None) -> dict[str, Any] | None:
    """One rank spawned by :func:`launch_train`."""
    import logging as _logging

    from atft_core.config import config_from_yaml_text

    _logging.basicConfig(level=_logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return train_as_rank(config_from_yaml_text(cfg_yaml), run_dir, resume, features_path, hook_factory,
                         evaluate_holdout=evaluate_holdout, graph_store=graph_store)


def train_as_rank(cfg, run_dir: str | Path, resume: bool, features_path: str | None = None,
                  hook_factory: Callable[[Any], Callable[[dict], None]] | None = None,
                  evaluate_holdout: bool = True, graph_store: str | Path | None = None) -> dict[str, Any] | None:
    """This process as one rank (environment from torchrun / the elastic agent): join the
    group, load the data, train; rank 0 returns the run summary, the others None."""
    from atft_core.train.api import load_features, train_run

    check_settings(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    cfg = without_nproc(cfg)
    ctx = init_distributed(cfg.train.device)
    try:
        if features_path:
            import polars as pl

            data = pl.read_parquet(features_path)
        else:
            data = load_features(cfg)
        hook = hook_factory(cfg) if (hook_factory is not None and ctx.is_main) else None
        res = train_run(cfg, data, run_dir, resume=resume, on_epoch_end=hook, dist=ctx,
                        evaluate_holdout=evaluate_holdout, graph_store=graph_store)
        return run_summary(res) if ctx.is_main else None
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def run_summary(res) -> dict[str, Any]:
    """The JSON-able headline of a TrainResult (what ``atft train`` prints)."""
    hold = {k: v for k, v in res.holdout_metrics.items() if not isinstance(v, dict | list)}
    return {"run_dir": str(res.run_dir), "best": res.best.get("value"), "best_epoch": res.best.get("epoch"),
            "best_value": res.best_value, "best_record": dict(res.best),
            "weights_path": str(res.weights_path), "metrics_path": str(res.metrics_path),
            "nan_steps": res.nan_steps, "resumed_from": res.resumed_from,
            "skipped_checkpoints": list(res.skipped_checkpoints), "moved_aside": res.moved_aside,
            "holdout": hold,
            "global_step": res.global_step, "train_seconds": res.train_seconds}


# --------------------------------------------------------------------------- launcher side
class LaunchError(RuntimeError):
    """A worker of a multi-process run failed (the message names the rank and why)."""


def run_workers(entrypoint: Callable[..., Any], args: tuple, nproc: int,
                monitor_interval_s: float = 0.5) -> dict[int, Any]:
    """``entrypoint(*args)`` in ``nproc`` spawned processes through torch's elastic launcher (the
    API behind ``torchrun --standalone``), no restarts. Returns {rank: return value}; raises
    :class:`LaunchError` naming the first rank that failed. ``entrypoint`` must be importable
    (module level)."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    lc = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"atft-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", rdzv_configs={"timeout": 120},
        max_restarts=0, monitor_interval=monitor_interval_s, start_method="spawn",
    )
    # one machine: gloo on loopback whatever the host's interfaces are; the CPU cores split
    # between the ranks (torchrun's rule too) instead of N x all cores fighting
    defaults = {"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
    added = [k for k in defaults if k not in os.environ]
    os.environ.update({k: defaults[k] for k in added})
    try:
        return elastic_launch(lc, entrypoint)(*args)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        why = (f"killed by signal {failure.signal_name()}" if failure.exitcode < 0
               else f"exit code {failure.exitcode}")
        raise LaunchError(f"rank {rank} of {nproc} failed ({why}); the run dir keeps the last "
                          "rank-0 checkpoint: relaunch with --resume") from None
    finally:
        for k in added:
            os.environ.pop(k, None)


def launch_train(cfg, run_dir: str | Path, nproc: int, *, resume: bool = True,
                 features_path: str | Path | None = None,
                 hook_factory: Callable[[Any], Callable[[dict], None]] | None = None,
                 evaluate_holdout: bool = True, graph_store: str | Path | None = None) -> dict[str, Any]:
    """Train ``cfg`` in ``run_dir`` with ``nproc`` processes on this machine.

    Args:
        features_path: a features parquet every rank reads (the pipeline's); default: every rank
            builds ``load_features(cfg)`` (deterministic).
        hook_factory: a picklable (module-level) ``f(cfg) -> on_epoch_end`` built on rank 0 (the
            workers are spawned, closures do not travel).
        evaluate_holdout: as for ``train_run`` (the retrain pipeline scores the holdout itself).
        graph_store: as for ``train_run``: every rank reads and adds day graphs there.
    Returns rank 0's :func:`run_summary`. Raises :class:`LaunchError` when a rank dies.
    """
    from atft_core.train.api import prepare_run_dir

    check_settings(cfg, nproc)
    cfg = without_nproc(cfg)
    # the run-dir checks (resume point, its config, foreign files) as one clear error here rather
    # than as a dead rank; idempotent, the ranks' train_run repeats them
    prepare_run_dir(cfg, Path(run_dir), resume)
    args = (cfg.to_yaml(), str(run_dir), resume, str(features_path) if features_path else None, hook_factory,
            evaluate_holdout, str(graph_store) if graph_store is not None else None)
    return run_workers(_worker, args, nproc)[0]
