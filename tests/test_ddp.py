"""torch.distributed training (gloo on CPU): N processes through the elastic launcher give the same
loss curve and weights as one process with the same global batch (a cross-day Sharpe term
included), a SIGKILLed rank ends the job and a relaunch resumes from the last rank-0 checkpoint,
with the same or another process count."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer import TinyModel, ToyLoader, tiny_cfg  # noqa: E402

from atft_core.train import ddp  # noqa: E402
from atft_core.train.checkpoint import latest_checkpoint, load_checkpoint  # noqa: E402
from atft_core.train.ddp import DistContext, identity_sha256  # noqa: E402
from atft_core.train.gpu_stats import TIMING_KEYS as TIMING  # noqa: E402  (wall-clock figures differ by rank)
from atft_core.train.loop import Trainer  # noqa: E402

TESTS = str(Path(__file__).parent)
ROOT = str(Path(__file__).resolve().parents[1])
# 22 days in batches of 3: a 2+1 split on 2 ranks, and a last 1-day batch where rank 1 has nothing
N_DAYS, DAYS_PER_BATCH = 22, 3
TOL = 1e-5


def sharpe_toy_loss(pred, batch, weights, loss_cfg, horizons):
    """Per-day MSE (mean over days) + weights.sharpe x (-Sharpe of the daily long-short return
    across the batch's days): the cross-day term that does not split into per-day losses."""
    mse, ls = [], []
    for sl in batch.day_slices():
        p, y, m = pred[sl], batch.y[sl], batch.mask[sl].float()
        mse.append(((p - y) ** 2 * m).sum() / m.sum().clamp(min=1))
        ls.append((torch.tanh(p[:, 0]) * y[:, 0] * m[:, 0]).sum() / m[:, 0].sum().clamp(min=1))
    mse_t, r = torch.stack(mse).mean(), torch.stack(ls)
    sharpe = r.mean() / (r.std(unbiased=False) + 1e-2)
    total = weights.mse * mse_t - weights.sharpe * sharpe
    return total, {"mse": float(mse_t.detach()), "sharpe": float(sharpe.detach())}


class SlowLoader(ToyLoader):
    def __init__(self, sleep_s: float = 0.0, **kw):
        super().__init__(**kw)
        self.sleep_s = sleep_s

    def __iter__(self):
        for b in super().__iter__():
            time.sleep(self.sleep_s)  # lets a test kill a rank mid-epoch
            yield b


def make_trainer(run_dir, dist=None, sleep_s=0.0):
    cfg = tiny_cfg("model.dropout=0.0")
    torch.manual_seed(0)
    model = TinyModel(3, dropout=0.0)
    train = SlowLoader(sleep_s, n_days=N_DAYS, days_per_batch=DAYS_PER_BATCH)
    val = ToyLoader(n_days=8, shuffle=False, seed=9, start=100)
    return Trainer(cfg, model, train, val, run_dir, loss_fn=sharpe_toy_loss, dist=dist)


def toy_worker(run_dir: str, sleep_s: float) -> dict | None:
    """One rank of a toy DDP run (spawned by the elastic launcher); returns the rank's history."""
    ctx = ddp.init_distributed("cpu")
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / f"rank{ctx.rank}.pid").write_text(str(os.getpid()))
    try:
        res = make_trainer(run_dir, ctx, sleep_s).fit(resume=True)
        return {"history": res.history, "resumed_from": res.resumed_from, "rank": ctx.rank}
    finally:
        import torch.distributed as dist

        dist.destroy_process_group()


def launch_main() -> None:
    """``python test_ddp.py RUN_DIR NPROC SLEEP``: the launcher as its own process (so a test can
    SIGKILL one of its ranks); prints rank 0's result as JSON, or the launch error (exit 1)."""
    from test_ddp import toy_worker as worker  # importable by name in the spawned ranks

    run_dir, nproc, sleep_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    try:
        out = ddp.run_workers(worker, (run_dir, sleep_s), nproc)
    except ddp.LaunchError as err:
        print(f"LAUNCH ERROR: {err}", flush=True)
        sys.exit(1)
    print(json.dumps({"resumed_from": out[0]["resumed_from"], "epochs": len(out[0]["history"])}))


def strip(history):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in history]


def curve(history, key="train/loss"):
    """Per-epoch values; NaN where the epoch's phase did not compute the term."""
    return np.array([r.get(key, np.nan) for r in history], dtype=np.float64)


def assert_close_runs(ref_dir: Path, other_dir: Path) -> float:
    """Same epochs, decisions and (within TOL) losses, metrics and final weights; returns the
    largest loss-curve difference."""
    a = load_checkpoint(latest_checkpoint(ref_dir / "checkpoints"))
    b = load_checkpoint(latest_checkpoint(other_dir / "checkpoints"))
    assert a["global_epoch"] == b["global_epoch"] and a["global_step"] == b["global_step"]
    ha, hb = a["history"], b["history"]
    assert [r["phase"] for r in ha] == [r["phase"] for r in hb]
    for key in ("best", "early_stop", "lr_reduced", "steps", "stock_days"):
        assert [r[key] for r in ha] == [r[key] for r in hb], key
    diff = 0.0
    for key in ("train/loss", "val/loss", "val/rank_ic_5d", "train/sharpe", "grad_norm", "lr"):
        ca, cb = curve(ha, key), curve(hb, key)
        np.testing.assert_allclose(cb, ca, rtol=TOL, atol=TOL, err_msg=key)
        if key in ("train/loss", "val/loss"):
            diff = max(diff, float(np.abs(ca - cb).max()))
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=TOL, atol=TOL)
    return diff


# --------------------------------------------------------------------------- fast
def test_day_bounds_are_contiguous_shares():
    for world, k in [(2, 4), (2, 3), (3, 7), (4, 2), (2, 1), (3, 0)]:
        b = DistContext(rank=0, world_size=world).day_bounds(k)
        assert len(b) == world and b[0][0] == 0 and b[-1][1] == k
        assert all(b[i][1] == b[i + 1][0] for i in range(world - 1))
        sizes = [hi - lo for lo, hi in b]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_process_count_is_not_part_of_the_resume_identity():
    cfg = tiny_cfg()
    two = tiny_cfg("train.nproc=2")
    assert two.sha256() != cfg.sha256()
    assert identity_sha256(two) == identity_sha256(cfg) == cfg.sha256()
    assert identity_sha256(tiny_cfg("train.seed=1")) != cfg.sha256()


def test_settings_ddp_cannot_honour_are_refused(tmp_path):
    cfg = tiny_cfg("train.grad_accum_days=1")
    two = DistContext(rank=0, world_size=2)
    loaders = (ToyLoader(), ToyLoader(n_days=8, shuffle=False))
    with pytest.raises(ValueError, match="grad_accum_days=1 is not supported with 2 processes"):
        Trainer(cfg, TinyModel(3), *loaders, tmp_path, loss_fn=sharpe_toy_loss, dist=two)
    with pytest.raises(ValueError, match="prune_hook needs nproc=1"):
        Trainer(tiny_cfg(), TinyModel(3), *loaders, tmp_path, loss_fn=sharpe_toy_loss, dist=two,
                prune_hook=lambda e, v: None)


@pytest.mark.slow  # two CLI start-ups
def test_cli_refuses_a_bad_process_count(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT}
    r = subprocess.run([sys.executable, "-m", "atft_core.cli", "train", "--config", "test", "--nproc", "0",
                        "--run-dir", str(tmp_path / "r")], env=env, capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == "atft train: nproc must be >= 1, got 0"
    r = subprocess.run([sys.executable, "-m", "atft_core.cli", "train", "--config", "test", "--nproc", "2",
                        "--run-dir", str(tmp_path / "r"), "train.grad_accum_days=1"], env=env,
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(
        "atft train: train.grad_accum_days=1 is not supported with 2 processes")
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- slow: real processes
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The one-process run every multi-process run is compared with."""
    d = tmp_path_factory.mktemp("ref")
    t0 = time.perf_counter()
    res = make_trainer(d).fit()
    print(f"\n[ddp] 1 process: {time.perf_counter() - t0:.1f}s")
    return d, res


@pytest.mark.slow
def test_two_gloo_processes_give_the_one_process_loss_curve(reference, tmp_path, monkeypatch):
    ref_dir, ref = reference
    monkeypatch.syspath_prepend(TESTS)  # the spawned ranks import this module
    t0 = time.perf_counter()
    out = ddp.run_workers(toy_worker, (str(tmp_path), 0.0), 2)
    wall = time.perf_counter() - t0
    assert out[0]["resumed_from"] is None and (out[0]["rank"], out[1]["rank"]) == (0, 1)
    # every decision (val metrics, plateau, early stop, best epoch) is the same on both ranks
    assert strip(out[1]["history"]) == strip(out[0]["history"])
    assert strip(out[0]["history"])[0].keys() == strip(ref.history)[0].keys()
    assert any(r["train/sharpe"] != 0 for r in ref.history)  # the cross-day term was on
    diff = assert_close_runs(ref_dir, tmp_path)
    print(f"[ddp] 2 gloo processes: {wall:.1f}s, loss-curve max abs diff {diff:.3g}")
    # rank 0 alone wrote the outputs
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(len(ref.history)))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_0003.pt", "epoch_0004.pt"]
    ck = load_checkpoint(tmp_path / "checkpoints" / "epoch_0004.pt")
    assert ck["world_size"] == 2 and len(ck["rng_ranks"]) == 2


def _launch(run_dir: Path, nproc: int, sleep_s: float):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, TESTS])}
    return subprocess.Popen([sys.executable, __file__, str(run_dir), str(nproc), str(sleep_s)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_rank_mid_epoch(run_dir: Path, rank: int) -> Path:
    """Launch 2 ranks, SIGKILL ``rank`` a few batches after the 2nd checkpoint; the whole job
    must end with a launch error naming the rank. Returns the last checkpoint."""
    proc = _launch(run_dir, 2, 0.1)
    try:
        ck2 = run_dir / "checkpoints" / "epoch_0002.pt"
        deadline = time.monotonic() + 240
        while not ck2.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ck2.exists(), proc.communicate(timeout=60)
        time.sleep(0.35)  # into epoch 2
        assert proc.poll() is None, "run ended before a rank could be killed"
        os.kill(int((run_dir / f"rank{rank}.pid").read_text()), signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 1, out
    assert f"LAUNCH ERROR: rank {rank} of 2 failed (killed by signal SIGKILL)" in out
    last = latest_checkpoint(run_dir / "checkpoints")
    assert last.name in ("epoch_0002.pt", "epoch_0003.pt")
    return last


@pytest.mark.slow
def test_sigkill_of_one_rank_then_relaunch_resumes(reference, tmp_path):
    ref_dir, _ = reference
    last = _kill_rank_mid_epoch(tmp_path, rank=1)
    t0 = time.perf_counter()
    proc = _launch(tmp_path, 2, 0.0)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    done = json.loads(out.strip().splitlines()[-1])
    assert done == {"resumed_from": str(last), "epochs": 4}
    diff = assert_close_runs(ref_dir, tmp_path)
    print(f"\n[ddp] resume on 2 ranks: {time.perf_counter() - t0:.1f}s, max abs diff vs 1 process {diff:.3g}")


@pytest.mark.slow
def test_resume_with_another_process_count(reference, tmp_path):
    """Killed with 2 ranks, resumed with 1 process (in process, the plain Trainer)."""
    ref_dir, _ = reference
    last = _kill_rank_mid_epoch(tmp_path, rank=0)
    res = make_trainer(tmp_path).fit(resume=True)
    assert res.resumed_from == str(last)
    diff = assert_close_runs(ref_dir, tmp_path)
    print(f"\n[ddp] 2 -> 1 process resume: max abs diff vs 1 process {diff:.3g}")


@pytest.mark.slow
@pytest.mark.integration
def test_atft_train_nproc_2_matches_nproc_1(tmp_path):
    """The real model (PyG graph attention) and loss with the cross-day Sharpe term on, through
    ``atft train --nproc 2`` and through ``torchrun ... -m atft_core.cli train``: the same loss
    curve as one process."""
    over = ["data.synthetic.n_stocks=20", "train.max_train_batches_per_epoch=2", "train.device=cpu",
            "model.dropout=0.0",
            "train.phases=[{name: a, epochs: 1, blocks: {gat: false, fan: false}}, "
            "{name: b, epochs: 1, blocks: {gat: true, fan: true}, weights: {mse: 0.8, rankic: 0.1, sharpe: 0.1}}]"]
    env = {**os.environ, "PYTHONPATH": ROOT}
    runs, walls = {}, {}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    for n, launcher in ((1, ["--nproc", "1"]), (2, ["--nproc", "2"]), ("torchrun", [])):
        t0 = time.perf_counter()
        head = torchrun if n == "torchrun" else [sys.executable]
        r = subprocess.run([*head, "-m", "atft_core.cli", "train", "--config", "test", *launcher,
                            "--run-dir", str(tmp_path / f"n{n}"), *over], env=env, capture_output=True,
                           text=True, timeout=600, cwd=tmp_path)  # one var/work/graph_store for the three
        walls[n] = time.perf_counter() - t0
        assert r.returncode == 0, r.stderr[-3000:]
        assert json.loads(r.stdout)["run_dir"] == str(tmp_path / f"n{n}")  # one summary, from rank 0
        runs[n] = [json.loads(x) for x in (tmp_path / f"n{n}" / "metrics.jsonl").read_text().splitlines()]
    assert len(runs[1]) == len(runs[2]) == len(runs["torchrun"]) == 2
    assert "train/sharpe" not in runs[1][0] and np.isfinite(runs[1][1]["train/sharpe"])  # phase b: on
    diff = 0.0
    for key in ("train/loss", "val/loss", "train/sharpe", "val/rank_ic_5d"):
        a = curve(runs[1], key)
        for other in (2, "torchrun"):
            b = curve(runs[other], key)
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5, err_msg=f"{key} ({other})")
            diff = max(diff, float(np.abs(a - b).max())) if key.endswith("loss") else diff
    m1 = json.loads((tmp_path / "n1" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "n2" / "metrics.json").read_text())
    assert m2["holdout"]["rank_ic_1d"] == pytest.approx(m1["holdout"]["rank_ic_1d"], abs=1e-4)
    # the first run built and stored the day graphs; the DDP runs read them (and so the same
    # curves above are also graphs read back from disk == graphs built)
    assert m1["graph_store"]["hits"] == 0 and m1["graph_store"]["writes"] > 0
    assert m2["graph_store"]["hits"] > 0 and m2["graph_store"]["root"] == "var/work/graph_store"
    print(f"\n[ddp] atft train: nproc 1 {walls[1]:.1f}s, nproc 2 {walls[2]:.1f}s, torchrun 2 "
          f"{walls['torchrun']:.1f}s, loss max abs diff {diff:.3g}")


@pytest.mark.slow
@pytest.mark.integration
def test_retrain_train_task_launches_ddp_when_nproc_is_2(tmp_path, monkeypatch):
    """The DAG's train task (``pipeline.train_candidate``) with the ``nproc`` Param = 2 launches two
    gloo ranks on the run's features: same model identity and run dir as nproc 1 (the process
    count is not part of it), the same loss curve, rank 0's epoch metrics reach the textfile, and
    the returned references have the same shape as the one-process path."""
    from atft_core import pipeline

    for k in ("ATFT_REGISTRY", "ATFT_PUSHGATEWAY_URL", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)
    over = ["data.synthetic.n_stocks=20", "train.max_train_batches_per_epoch=2", "model.dropout=0.0",
            "train.phases=[{name: a, epochs: 1, blocks: {gat: false, fan: false}}, "
            "{name: b, epochs: 1, blocks: {gat: true, fan: false}, weights: {mse: 0.8, rankic: 0.1, sharpe: 0.1}}]"]
    out = {}
    for n in (1, 2):
        ctx = {"dag_id": "atft_retrain", "run_id": f"manual__n{n}", "as_of": "2024-05-07", "conf": None,
               "params": {"config": "test", "nproc": n, "overrides": over}}
        rc = pipeline.RunContext.build(ctx)
        feats = pipeline.build_features(ctx, pipeline.check_fresh_data(ctx))
        for prom in Path(rc.config.metrics.textfile_dir).glob("*.prom"):
            prom.unlink()  # what remains after n = 2 was written by its rank 0
        out[n] = (rc, pipeline.train_candidate(ctx, feats))
    (rc1, t1), (rc2, t2) = out[1], out[2]
    assert rc2.config.train.nproc == 2 and rc2.identity == rc1.identity  # nproc is not identity
    assert t2["nproc"] == 2 and set(t2) == set(t1)
    assert Path(t2["weights_path"]).is_file() and Path(t2["weights_path"]).parent == rc2.run_dir
    curves = [[json.loads(x) for x in (Path(t["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
              for t in (t1, t2)]
    for key in ("train/loss", "val/loss", "val/rank_ic_1d"):
        np.testing.assert_allclose(curve(curves[1], key), curve(curves[0], key), rtol=1e-5, atol=1e-5,
                                   err_msg=key)
    assert t2["best_value"] == pytest.approx(t1["best_value"], abs=1e-5)
    prom = "".join(p.read_text() for p in Path(rc2.config.metrics.textfile_dir).glob("*.prom"))
    epoch = [ln for ln in prom.splitlines() if ln.startswith("atft_train_epoch{")]
    assert epoch and float(epoch[-1].split()[-1]) == 2.0, prom[:2000]  # both epochs reported


if __name__ == "__main__":
    launch_main()
