"""``dag.test()`` of ``atft_score`` after ``atft_retrain`` (test config, file:// registry,
textfile metrics): the champion's signal of D is published and equals ``atft predict`` by hand;
the rejected candidate becomes the shadow and is scored apart; a re-run of D is idempotent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from atft_core.commands.demo import airflow_env

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, os, sys
import pendulum
sys.path.insert(0, os.path.join(sys.argv[1], "plugins"))
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=os.path.join(sys.argv[1], "dags"))
assert not bag.import_errors, bag.import_errors
out = []
for dag_id, day, conf in json.loads(sys.argv[2]):
    dr = bag.dags[dag_id].test(logical_date=pendulum.parse(day), run_conf=conf)
    tis = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
    xcom = {}
    for t in ("score_champion", "score_shadow", "update_shadow", "monitor"):
        if tis.get(t) == "success":
            xcom[t] = dr.get_task_instance(t).xcom_pull(task_ids=t)
    out.append({"dag": dag_id, "state": str(dr.state), "tis": tis, "xcom": xcom})
print("RUNS " + json.dumps(out, default=str))
"""


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two retrains + two scorings under Airflow; minutes on a loaded CPU
def test_score_after_retrain_publishes_champion_and_shadow(tmp_path):
    # thresholds that make the outcome certain: run 1 is promoted (any score passes), run 2 is
    # rejected (no model reaches RankIC 1), so the shadow exists
    base = {"config": "test", "min_rank_ic": -1.0, "min_sharpe": -20.0,
            "epochs_per_phase": [1, 1, 0, 0],
            "overrides": ["data.synthetic.signal_strength=0.3", "train.max_train_batches_per_epoch=3"]}
    day1, day2 = "2024-05-07T12:00:00+00:00", "2024-05-08T12:00:00+00:00"
    runs = [("atft_retrain", day1, base), ("atft_retrain", day2, base | {"min_rank_ic": 1.0}),
            ("atft_score", day2, {"config": "test"}), ("atft_score", day2, {"config": "test"})]
    registry = tmp_path / "registry"
    env = airflow_env(tmp_path / "airflow") | {"ATFT_REGISTRY": f"file://{registry}"}
    env.pop("ATFT_PUSHGATEWAY_URL", None)
    airflow = Path(sys.executable).with_name("airflow")
    mig = subprocess.run([str(airflow), "db", "migrate"], env=env, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert mig.returncode == 0, mig.stderr[-2000:]
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO), json.dumps(runs)], env=env,
                          capture_output=True, text=True, timeout=1500, cwd=tmp_path)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RUNS ")]
    assert proc.returncode == 0 and lines, (proc.stdout[-3000:], proc.stderr[-5000:])
    first, worse, score, rescore = json.loads(lines[-1].removeprefix("RUNS "))
    assert first["state"] == worse["state"] == "success"
    assert score["state"] == "success", score["tis"]
    champ, shadow = score["xcom"]["score_champion"], score["xcom"]["score_shadow"]
    assert champ["day"] == "2024-05-08" and not champ["already_published"]
    assert score["xcom"]["update_shadow"]["shadow"] == shadow["run_id"] != champ["run_id"]
    sig = registry / "signals" / "2024-05-08" / f"{champ['run_id']}.parquet"
    assert sig.is_file() and (registry / "signals" / "2024-05-08" / "shadow" / f"{shadow['run_id']}.parquet").is_file()
    assert "feature_psi" in champ["drift"] and len(champ["drift"]["feature_psi"]) > 20
    # re-run of D: same bytes, nothing rewritten
    assert rescore["state"] == "success" and rescore["xcom"]["score_champion"]["already_published"]
    assert rescore["xcom"]["score_champion"]["sha256"] == champ["sha256"]
    assert score["xcom"]["monitor"]["latest_signal"]["champion"] == "2024-05-08"

    # by hand: atft predict on the same champion and the same data -> the same bytes
    raw = next((tmp_path / "var" / "work" / "atft_score").rglob("raw"))
    out = tmp_path / "hand.parquet"
    hand = subprocess.run([sys.executable, "-m", "atft_core.cli", "predict", "--config", "test",
                           "--data", str(raw), "--date", "2024-05-08", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert hand.returncode == 0, hand.stderr[-2000:]
    assert out.read_bytes() == sig.read_bytes()
    prom = "".join(p.read_text() for p in (tmp_path / "var" / "metrics").glob("*.prom"))
    assert "atft_feature_psi{" in prom and "atft_signal_next_due_timestamp_seconds" in prom
