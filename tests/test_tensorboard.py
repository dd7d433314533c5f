"""TensorBoard event files of a real training run, read back with tensorboard's own event reader:
every scalar of every epoch equals metrics.jsonl; phase boundaries; hparams with holdout metrics."""

from __future__ import annotations

import math

import pytest

from atft_core.config import apply_overrides, load_config
from atft_core.train.callbacks import read_jsonl
from atft_core.train.tensorboard import TB_DIR, TensorBoardLogger, scalars_of

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

CFG = apply_overrides(load_config("test"), [
    "data.synthetic.n_stocks=20", "data.synthetic.n_days=140", "train.max_train_batches_per_epoch=2",
    "dataset.lookback=8", "split.val_days=10", "split.holdout_days=10",
    "train.phases.0.epochs=2", "train.phases.1.epochs=1", "train.phases.2.epochs=0",
    "train.phases.3.epochs=0", "train.early_stopping.patience=5",
])


def _accumulate(path) -> EventAccumulator:
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from atft_core.train.api import load_features, train_run

    run_dir = tmp_path_factory.mktemp("tb") / "run"
    res = train_run(CFG, load_features(CFG), run_dir, resume=False)
    return run_dir, res


@pytest.mark.slow
def test_every_epoch_scalar_equals_metrics_jsonl(run):
    run_dir, _ = run
    lines = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in lines] == [0, 1, 2]
    acc = _accumulate(run_dir / TB_DIR)
    tags = set(acc.Tags()["scalars"])
    n_checked = 0
    for rec in lines:
        want = scalars_of(rec)
        assert {"train/loss", "val/rank_ic_1d", "val/rank_ic_20d", "lr", "grad_norm",
                "samples_per_s"} <= set(want)
        assert any(k.startswith("train/") and k != "train/loss" for k in want)  # loss components
        for key, value in want.items():
            assert key in tags, key
            got = [e.value for e in acc.Scalars(key) if e.step == rec["epoch"]]
            assert len(got) == 1, (key, rec["epoch"], got)
            assert got[0] == pytest.approx(value, rel=1e-6, abs=1e-7), key  # float32 in the file
            n_checked += 1
    assert n_checked >= 3 * 15
    # phase boundaries: epoch 0 starts phase 0, epoch 2 starts phase 1
    assert [(e.step, e.value) for e in acc.Scalars("phase/index")] == [(0, 0.0), (2, 1.0)]


@pytest.mark.slow
def test_hparams_carry_the_holdout_metrics(run):
    run_dir, res = run
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = _accumulate(run_dir / TB_DIR)
    content = acc.PluginTagToContent("hparams")
    assert content, "no hparams entry"
    found = {}
    for blob in content.values():
        data = plugin_data_pb2.HParamsPluginData.FromString(blob)
        if data.HasField("session_start_info"):
            found.update({k: v for k, v in data.session_start_info.hparams.items()})
    assert found["model.hidden_size"].number_value == CFG.model.hidden_size
    hold = res.holdout_metrics["rank_ic_1d"]
    # add_hparams logs each metric as a scalar beside the session info
    got = [e.value for e in acc.Scalars("holdout/rank_ic_1d")]
    assert got == [pytest.approx(hold, rel=1e-6)]
    assert [e.value for e in acc.Scalars("holdout/jpx_sharpe")] == [
        pytest.approx(res.holdout_metrics["jpx_sharpe"], rel=1e-6)]


def test_logger_skips_non_numbers_and_keeps_bools(tmp_path):
    rec = {"phase": "baseline", "phase_index": 0, "epoch": 0, "epoch_in_phase": 0, "x": 1.5,
           "nan": math.nan, "none": None, "best": True, "val": {"a": 1}}
    assert scalars_of(rec) == {"x": 1.5, "best": 1.0}
    lg = TensorBoardLogger(tmp_path)
    lg.epoch(rec)
    lg.close()
    acc = _accumulate(tmp_path / TB_DIR)
    assert set(acc.Tags()["scalars"]) == {"x", "best", "phase/index"}
