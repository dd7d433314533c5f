"""Issue 12 registry faults: rollback walks the promotion history as a stack (fault 5), publish
refuses a run directory mixed from two trainings (fault 3), records live in their own module."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from safetensors.torch import save_file
from test_registry import all_keys, make_run_dir, reg  # noqa: F401  (reg: file + s3 fixture)

from atft_core.config import Config, apply_overrides
from atft_core.registry import PublishError, Registry, RegistryError

pytest_plugins = ["s3_server"]


def _publish(reg, tmp_path, *ids):  # noqa: F811
    for i, rid in enumerate(ids):
        reg.publish(make_run_dir(tmp_path / "src", rid, seed=i))


# --------------------------------------------------------------------------- fault 5
def test_rollback_walks_back_through_promotions_instead_of_toggling(reg, tmp_path):  # noqa: F811
    _publish(reg, tmp_path, "B", "C", "D", "E")
    for rid in ("B", "C", "D"):
        reg.promote(rid, reason="gate", actor="t")
    assert reg.rollback_stack() == ("B", "C")

    first = reg.rollback(reason="bad D", actor="t")
    assert (first.previous, first.run_id, first.rollback_stack) == ("D", "C", ("B",))
    second = reg.rollback(reason="bad C", actor="t")  # the old code went back to D here
    assert (second.previous, second.run_id, second.rollback_stack) == ("C", "B", ())
    with pytest.raises(RegistryError, match="oldest run on its promotion stack"):
        reg.rollback(reason="again", actor="t")
    assert reg.get_alias().run_id == "B"

    # a promotion after rollbacks pushes again; history keeps every move in order
    reg.promote("E", reason="gate", actor="t")
    assert reg.rollback(reason="bad E", actor="t").run_id == "B"
    assert [(h.action, h.run_id) for h in reg.history()] == [
        ("promote", "B"), ("promote", "C"), ("promote", "D"), ("rollback", "C"),
        ("rollback", "B"), ("promote", "E"), ("rollback", "B")]


def test_rollback_to_a_named_run(reg, tmp_path):  # noqa: F811
    _publish(reg, tmp_path, "A", "B", "C", "X")
    for rid in ("A", "B", "C"):
        reg.promote(rid, reason="gate", actor="t")
    rec = reg.rollback(to="A", reason="back to A", actor="t")  # on the stack: pops down to it
    assert (rec.run_id, rec.rollback_stack) == ("A", ())
    rec = reg.rollback(to="X", reason="known good", actor="t")  # not on it: pushed like a promote
    assert (rec.run_id, rec.rollback_stack) == ("X", ("A",))
    assert reg.rollback(reason="undo", actor="t").run_id == "A"


def test_records_written_before_the_stack_existed_are_replayed(tmp_path, monkeypatch):
    reg_ = Registry(f"file://{tmp_path / 'reg'}")
    _publish(reg_, tmp_path, "B", "C", "D")
    # the old writer: no rollback_stack field in the records (and an old toggling rollback)
    monkeypatch.setattr(Registry, "_stack_after", lambda self, cur, action, run_id: None)
    for rid in ("B", "C", "D"):
        reg_.promote(rid, reason="gate", actor="t")
    reg_._move("champion", "C", action="rollback", reason="old", actor="t", expect="D",
               gate=None, verify=False)
    raw = json.loads((reg_.store.root / "aliases" / "champion.json").read_text())
    assert raw["rollback_stack"] is None and raw["previous"] == "D"
    monkeypatch.undo()
    assert reg_.rollback_stack() == ("B",)  # replayed: B, C pushed; rollback to C popped C
    assert reg_.rollback(reason="r", actor="t").run_id == "B"


def test_cli_rollback_says_where_it_went(tmp_path):
    uri = f"file://{tmp_path / 'reg'}"
    reg_ = Registry(uri)
    _publish(reg_, tmp_path, "B", "C", "D")
    for rid in ("B", "C", "D"):
        reg_.promote(rid, reason="gate", actor="t")

    def rollback():
        return subprocess.run([sys.executable, "-m", "atft_core.cli", "registry", "rollback",
                               "--uri", uri, "--reason", "r", "--actor", "t"],
                              capture_output=True, text=True, timeout=120)

    p = rollback()
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip() == ("atft registry: rolled champion back from D to C "
                                "(1 earlier run left to roll back to)")
    assert json.loads(p.stdout)["run_id"] == "C"
    assert json.loads(rollback().stdout)["run_id"] == "B"
    p = rollback()
    assert p.returncode == 1 and "nothing earlier to roll back to" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- fault 3
def _other_config_yaml() -> str:
    return apply_overrides(Config(), ["train.seed=7"]).to_yaml()


def test_publish_refuses_a_mixed_run_dir_and_writes_nothing(reg, tmp_path):  # noqa: F811
    # a resume refused for another config had already overwritten config.yaml (fault 3)
    run = make_run_dir(tmp_path, "mixed-config")
    (run / "config.yaml").write_text(_other_config_yaml())
    with pytest.raises(PublishError, match="mixes runs: config.yaml hashes to") as err:
        reg.publish(run)
    assert "\n" not in str(err.value)
    other = apply_overrides(Config(), ["train.seed=7"]).sha256()[:12]
    assert other in str(err.value) and Config().sha256()[:12] in str(err.value)

    # weights from another training (a different config) beside this run's metrics
    run = make_run_dir(tmp_path, "mixed-weights")
    save_file({"w": __import__("torch").zeros(3)}, str(run / "model.safetensors"),
              metadata={"config_sha256": json.dumps("f" * 64), "epoch": "3",
                        "value": json.dumps(0.05)})
    with pytest.raises(PublishError, match="model.safetensors names config ffffffffffff"):
        reg.publish(run)

    # same config, but the weights are not the epoch metrics.json reports (two trainings)
    run = make_run_dir(tmp_path, "mixed-epoch")
    m = json.loads((run / "metrics.json").read_text())
    m["best"] = {"epoch": 9, "value": 0.07}
    (run / "metrics.json").write_text(json.dumps(m))
    with pytest.raises(PublishError, match="best is epoch 9 .* holds epoch 3"):
        reg.publish(run)

    # metrics.json that names no config at all cannot be checked: refused
    run = make_run_dir(tmp_path, "no-hash")
    m = json.loads((run / "metrics.json").read_text())
    del m["config_sha256"]
    (run / "metrics.json").write_text(json.dumps(m))
    with pytest.raises(PublishError, match="metrics.json names config nothing"):
        reg.publish(run)
    assert all_keys(reg) == []  # refused before the self-check and before any upload


@pytest.mark.slow  # a CLI subprocess importing torch (~5 s on the shared box)
def test_cli_publish_mixed_run_is_one_line(tmp_path):
    run = make_run_dir(tmp_path, "mixed")
    (run / "config.yaml").write_text(_other_config_yaml())
    p = subprocess.run([sys.executable, "-m", "atft_core.cli", "registry", "publish", str(run),
                        "--uri", f"file://{tmp_path / 'reg'}"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith("atft registry: PublishError: run directory ") and "mixes runs" in line
    assert not (tmp_path / "reg" / "runs").exists()


# --------------------------------------------------------------------------- records module
def test_records_have_their_own_module_and_old_imports_work():
    from atft_core import registry
    from atft_core.registry import records
    from atft_core.registry import registry as registry_impl

    for name in ("Manifest", "AliasRecord", "RunFile"):
        assert getattr(registry, name) is getattr(records, name) is getattr(registry_impl, name)
    old = records.AliasRecord(alias="champion", run_id="A", manifest_sha256="0" * 64,
                              promoted_at="2026-01-05T00:00:00+00:00", previous=None, seq=1,
                              action="promote", reason="r", actor="t", txn="x").to_dict()
    del old["rollback_stack"]  # as written by the previous version
    rec = records.AliasRecord.from_bytes(json.dumps(old).encode(), "old")
    assert rec.rollback_stack is None and rec.named_runs() == {"A"}
    new = records.AliasRecord.from_bytes(
        json.dumps({**old, "rollback_stack": ["X", "Y"]}).encode(), "new")
    assert new.rollback_stack == ("X", "Y") and new.named_runs() == {"A", "X", "Y"}
    assert records.AliasRecord.from_bytes(new.to_bytes(), "roundtrip") == new
    from atft_core.registry import IntegrityError

    with pytest.raises(IntegrityError, match="malformed alias record"):
        records.AliasRecord.from_bytes(
            json.dumps({**old, "rollback_stack": ["../etc"]}).encode(), "hostile")
