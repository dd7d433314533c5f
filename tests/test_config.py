"""Typed config: YAML + dotted overrides; unknown keys and wrong types name the key."""

import pytest

from atft_core.cli import main
from atft_core.config import (
    CONFIG_DIR,
    ConfigError,
    apply_overrides,
    config_from_yaml_text,
    load_config,
)


def test_every_shipped_config_loads():
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert {"default", "demo", "test"} <= set(names)
    for n in names:
        load_config(n)  # experiment configs too: every file validates
    for n in ("default", "demo", "test"):
        cfg = load_config(n)
        assert cfg.horizons == (1, 5, 10, 20)
        assert len(cfg.train.phases) == 4


def test_default_phases_follow_spec_table():
    cfg = load_config("default")
    p = cfg.train.phases
    assert [ph.name for ph in p] == ["baseline", "graph", "frequency", "finetune"]
    assert [(ph.blocks.gat, ph.blocks.fan) for ph in p] == [(False, False), (True, False), (True, True), (True, True)]
    assert [ph.weights.mse for ph in p] == [1.0, 0.8, 0.6, 0.4]
    assert [ph.weights.rankic for ph in p] == [0.0, 0.1, 0.2, 0.3]
    assert p[3].lr_scale < 1.0
    assert cfg.train.scheduler.monitor == "val/rank_ic_5d"
    assert cfg.purge_days == 21  # 1 + max horizon


def test_dotted_overrides_typed():
    cfg = load_config("demo", ["train.optimizer.lr=1e-4", "model.hidden_size=32",
                               "train.phases.2.epochs=3", "features.horizons=[1,5]",
                               "data.source=/tmp/x.parquet", "gate.min_sharpe=0.25"])
    assert cfg.train.optimizer.lr == pytest.approx(1e-4)
    assert cfg.model.hidden_size == 32 and cfg.train.phases[2].epochs == 3
    assert cfg.features.horizons == (1, 5) and cfg.data.source == "/tmp/x.parquet"
    assert cfg.gate.min_sharpe == 0.25


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.optimizer.lrr=1", "train.optimizer.lrr: unknown key"),
        ("trian.seed=1", "trian: unknown key"),
        ("model.hidden_size=abc", "model.hidden_size"),
        ("model.hidden_size=4", "model.hidden_size"),
        ("train.phases.9.epochs=1", "train.phases.9: no such list index"),
        ("features.horizons=[5,1]", "features.horizons"),
        ("noequals", "not of the form"),
        ("train.precision=fp8", "train.precision"),
    ],
)
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config("default", [override])
    assert needle in str(err.value)


def test_yaml_unknown_key_and_roundtrip(tmp_path):
    cfg = load_config("test")
    again = config_from_yaml_text(cfg.to_yaml())
    assert again == cfg and again.sha256() == cfg.sha256()
    assert apply_overrides(cfg, ["train.seed=5"]).sha256() != cfg.sha256()
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  hidden_sise: 12\n")
    with pytest.raises(ConfigError, match="model.hidden_sise: unknown key"):
        load_config(bad)
    with pytest.raises(ConfigError, match="unknown config 'nope'"):
        load_config("nope")


def test_horizon_weights_must_cover_horizons():
    with pytest.raises(ConfigError, match="horizon_weights has no weight for horizons \\[3\\]"):
        load_config("default", ["features.horizons=[1,3]"])


def test_cli_reports_config_errors(capsys):
    assert main(["config", "model.nope=1"]) == 2
    assert "model.nope: unknown key" in capsys.readouterr().err
    assert main(["config", "--config", "test", "train.seed=4"]) == 0
    assert "seed: 4" in capsys.readouterr().out


# --------------------------------------------------------------------------- issue 12, faults 4 and 12
def _float_leaves(node, prefix=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _float_leaves(v, (*prefix, str(k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _float_leaves(v, (*prefix, str(i)))
    elif isinstance(node, float):
        yield ".".join(prefix)


def test_every_float_in_the_config_refuses_nan_and_inf():
    keys = list(_float_leaves(load_config("default").to_dict()))
    assert "gate.min_rank_ic" in keys and "train.phases.0.lr_scale" in keys and len(keys) > 30
    for key in keys:
        for bad in (".nan", ".inf", "-.inf"):
            with pytest.raises(ConfigError, match=key.rsplit(".", 1)[-1]):
                load_config("default", [f"{key}={bad}"])


@pytest.mark.parametrize(("override", "needle"), [
    ("train.phases=[]", "at least one phase"),
    ("train.phases=[{name: a, epochs: 0}, {name: b, epochs: 0}]", "every phase has 0 epochs"),
    ("train.phases=[{name: a, epochs: 1}, {name: a, epochs: 1}]", "distinct"),
    ("train.early_stopping.monitor=val/rank_ic_3d", "early_stopping.monitor"),
    ("train.scheduler.monitor=val/accuracy", "scheduler.monitor"),
    ("hpo.lr_min=0.1", "lr_min"),
    ("model.hidden_size=30", "not divisible by model.attn_heads"),
    ("hpo.hidden_sizes=[32, 30, 64]", "[30]"),
    ("model.quantiles=[0.5, 1.5]", "quantiles"),
])
def test_config_refuses_what_train_would_refuse(override, needle, capsys):
    from atft_core.cli import main

    with pytest.raises(ConfigError, match=needle):
        load_config("default", [override])
    assert main(["config", override]) == 2  # `atft config` says so, one line, no traceback
    err = capsys.readouterr().err
    assert err.startswith("atft: config error:") and needle in err and err.count("\n") == 1
