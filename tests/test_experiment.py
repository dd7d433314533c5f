"""`atft experiment` protocol: explicit-window splits (regression for the old script's "split does
not respect the window" bug), shuffled control, rank ensemble, CLI input errors."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
import torch

from atft_core.config import Config, apply_overrides
from atft_core.experiment import experiment_splits, mean_std, rank_ensemble, shuffled_panel

CFG = apply_overrides(Config(), ["split.val_days=20", "split.embargo_days=5"])  # purge 21


def bdays(start: dt.date, n: int) -> list[dt.date]:
    out, d = [], start
    while len(out) < n:
        if d.weekday() < 5:
            out.append(d)
        d += dt.timedelta(days=1)
    return out


DAYS = bdays(dt.date(2016, 1, 4), 700)  # 2016-01 .. 2018-09


def _between(days, a, b) -> int:
    return sum(1 for d in days if a < d < b)


@pytest.mark.parametrize("train_end,eval_start", [
    (dt.date(2017, 6, 30), dt.date(2018, 1, 4)),   # train end far before eval: the old bug
    (dt.date(2017, 11, 15), dt.date(2017, 12, 15)),  # exactly about the purge
    (dt.date(2016, 12, 30), dt.date(2018, 3, 1)),
])
def test_any_gap_of_at_least_purge_is_accepted(train_end, eval_start):
    sp = experiment_splits(DAYS, train_end, eval_start, CFG)
    lag = 1 + max(CFG.horizons)
    assert sp.val[-1] <= train_end and sp.holdout[0] >= eval_start
    assert sp.val == [d for d in DAYS[:-lag] if d <= train_end][-CFG.split.val_days:]
    assert _between(DAYS, sp.train[-1], sp.val[0]) == CFG.purge_days + CFG.split.embargo_days
    assert _between(DAYS, sp.val[-1], sp.holdout[0]) >= CFG.purge_days
    assert sp.holdout == [d for d in DAYS[:-lag] if d >= eval_start]
    assert sp.unlabelled == DAYS[-lag:]
    assert sp.train[0] == DAYS[0] and max(sp.train) < min(sp.val) < max(sp.val) < min(sp.holdout)


def test_the_old_script_rejected_such_a_split():
    """What scripts/real_sample_experiment.py did: make_splits with holdout = eval days puts val
    right before eval, so a train_end earlier than eval_start - gap was refused."""
    from atft_core.dataset import make_splits

    train_end, eval_start = dt.date(2017, 6, 30), dt.date(2018, 1, 4)
    lag = 1 + max(CFG.horizons)
    n_eval = sum(d >= eval_start for d in DAYS[:-lag])
    old = make_splits(DAYS, apply_overrides(CFG, {"split.holdout_days": n_eval}))
    assert old.val[-1] > train_end  # -> "split does not respect the window"
    new = experiment_splits(DAYS, train_end, eval_start, CFG)
    assert new.val[-1] <= train_end


def test_gap_shorter_than_purge_and_bad_windows_are_refused():
    i = DAYS.index(dt.date(2017, 11, 15))
    with pytest.raises(ValueError, match="need >= purge_days 21"):
        experiment_splits(DAYS, DAYS[i], DAYS[i + 10], CFG)
    ok = experiment_splits(DAYS, DAYS[i], DAYS[i + 22], CFG)  # 21 days strictly between
    assert _between(DAYS, ok.val[-1], ok.holdout[0]) == 21
    with pytest.raises(ValueError, match="must be before"):
        experiment_splits(DAYS, DAYS[i], DAYS[i], CFG)
    with pytest.raises(ValueError, match="labelled days up to"):
        experiment_splits(DAYS, DAYS[30], DAYS[200], CFG)
    with pytest.raises(ValueError, match="no labelled day"):
        experiment_splits(DAYS, DAYS[400], DAYS[-3], CFG)


def test_shuffled_panel_permutes_targets_within_each_day():
    from types import SimpleNamespace  # noqa: F401 (a minimal Panel-like dataclass below)

    from atft_core.dataset import Panel

    S, T = 6, 4
    g = torch.Generator().manual_seed(0)
    y = torch.randn(S, T, 2, generator=g)
    usable = torch.ones(S, T, dtype=torch.bool)
    usable[0, 0] = False
    p = Panel(dates=tuple(DAYS[:T]), codes=np.array([str(i) for i in range(S)]), feature_names=("a",),
              horizons=(1, 5), x=torch.zeros(S, T, 1), y=y, y_raw=y * 0.01, mask=usable[:, :, None].repeat(1, 1, 2),
              usable=usable, returns=torch.zeros(S, T), sector=torch.zeros(S, T, dtype=torch.int32),
              sector_codes=("0",))
    sp = shuffled_panel(p, seed=1)
    for t in range(T):
        idx = torch.nonzero(usable[:, t]).squeeze(1)
        assert sorted(sp.y[idx, t, 0].tolist()) == sorted(p.y[idx, t, 0].tolist())
        assert not torch.equal(sp.y[idx, t], p.y[idx, t])
    assert torch.equal(sp.y[0, 0], p.y[0, 0])  # the unusable stock-day is untouched
    assert torch.equal(sp.x, p.x)


def test_rank_ensemble_is_mean_of_daily_ranks():
    frame = pl.DataFrame({"Date": [dt.date(2020, 1, 1)] * 4 + [dt.date(2020, 1, 2)] * 4,
                          "Code": list("abcd") * 2, "y_1d": [0.1] * 8})
    a = frame.with_columns(pred_1d=pl.Series([1.0, 2, 3, 4, 4, 3, 2, 1]))
    b = frame.with_columns(pred_1d=pl.Series([4.0, 3, 2, 1, 1, 2, 3, 40]))
    e = rank_ensemble([a, b], (1,))
    np.testing.assert_allclose(e["pred_1d"].to_numpy(), [0.625] * 4 + [0.625, 0.625, 0.625, 0.625])
    c = frame.with_columns(pred_1d=pl.Series([1.0, 2, 3, 4, 1, 2, 3, 4]))
    np.testing.assert_allclose(rank_ensemble([a, c], (1,))["pred_1d"].to_numpy()[:4],
                               [0.25, 0.5, 0.75, 1.0])
    assert mean_std([1.0, 2.0, None, 3.0]) == (2.0, 1.0)
    assert mean_std([None]) == (None, None)


def test_cli_input_errors_are_one_line(tmp_path, capsys):
    from atft_core.cli import main

    base = ["experiment", "--data", str(tmp_path / "nope.parquet"), "--train-end", "2017-12-29",
            "--eval-start", "2018-01-15", "--data-end", "2019-12-30", "--out", str(tmp_path / "o")]
    assert main(base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("atft experiment: --data") and "does not exist" in err[-1]
    bad = base.copy()
    bad[bad.index("2017-12-29")] = "2017-13-01"
    assert main(bad) == 2
    assert "is not an ISO date" in capsys.readouterr().err
    assert main(base + ["--seeds", "0"]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_experiment_end_to_end_on_a_synthetic_quotes_file(tmp_path, capsys):
    """The whole command on a small synthetic market: ladder, 2 seeds + ensemble, control, all on
    the same evaluation days; results.json, report.md, plots; then experiment-combine merges a
    third seed run in another dir."""
    import json

    from atft_core.cli import main
    from atft_core.data.synthetic import generate_market

    cfg = apply_overrides(load_test_config(), ["data.synthetic.n_stocks=30", "data.synthetic.n_days=200"])
    quotes = generate_market(cfg.data.synthetic, cfg.horizons).quotes
    data = tmp_path / "quotes.parquet"
    quotes.write_parquet(data)
    days = sorted(set(quotes["Date"].to_list()))
    common = ["--data", str(data), "--train-end", str(days[120]), "--eval-start", str(days[150]),
              "--data-end", str(days[-1]), "--config", "test", "--threads", "1",
              "train.max_train_batches_per_epoch=2", "train.phases.1.epochs=0",
              "train.phases.2.epochs=0", "train.phases.3.epochs=0"]
    out = tmp_path / "exp"
    assert main(["experiment", "--seeds", "2", "--out", str(out), *common]) == 0
    res = json.loads((out / "results.json").read_text())
    names = set(res["results"])
    assert {"baseline: ridge", "baseline: reversal_1d", "baseline: low_vol_20d", "ATFT seed 0",
            "ATFT seed 1", "ATFT seed ensemble", "control: shuffled labels"} <= names
    n_days = {res["results"][n]["n_days"] for n in names}
    assert len(n_days) == 1  # every model scored on the same evaluation days
    assert res["daily"]["ATFT seed 0"]["date"][0] >= str(days[150])
    assert res["seed_summary"]["rank_ic_1d"][0] == pytest.approx(
        (res["results"]["ATFT seed 0"]["rank_ic_1d"] + res["results"]["ATFT seed 1"]["rank_ic_1d"]) / 2)
    assert (out / "report.md").read_text().count("ATFT mean ± std over seeds") == 1
    assert (out / "cum_rank_ic_1d.png").stat().st_size > 1000
    assert any((out / "run_seed0" / "tensorboard").iterdir())  # event files per run
    # a "third seed" from another dir (seed 1's predictions under the name seed 2: no 4th training)
    import shutil

    other = tmp_path / "exp2"
    other.mkdir()
    shutil.copy(out / "preds_seed1.parquet", other / "preds_seed2.parquet")
    side = dict(res, config=dict(res["config"], train=dict(res["config"]["train"], seed=2)))
    (other / "results.json").write_text(json.dumps(side))
    assert main(["experiment-combine", str(out), str(other)]) == 0
    merged = json.loads((out / "results.json").read_text())
    assert {"ATFT seed 0", "ATFT seed 1", "ATFT seed 2"} <= set(merged["results"])
    assert merged["results"]["ATFT seed 2"]["rank_ic_1d"] == res["results"]["ATFT seed 1"]["rank_ic_1d"]
    assert "control: shuffled labels" in merged["results"] and not merged["partial"]
    mean3 = np.mean([merged["results"][f"ATFT seed {i}"]["rank_ic_1d"] for i in range(3)])
    assert merged["seed_summary"]["rank_ic_1d"][0] == pytest.approx(mean3)
    bad = dict(side, splits=dict(side["splits"], gap_days=0))
    (other / "results.json").write_text(json.dumps(bad))
    assert main(["experiment-combine", str(out), str(other)]) == 2  # other splits: refused
    assert main(["experiment-combine", str(out), str(out)]) == 2  # same seeds twice
    capsys.readouterr()


def load_test_config():
    from atft_core.config import load_config

    return load_config("test")
