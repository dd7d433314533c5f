"""Which rejected candidate becomes the shadow (atft_core.serving.shadow.newest_rejected)."""

from __future__ import annotations

import datetime as dt
import json
import os

from atft_core.serving.shadow import newest_rejected


def _summary(root, name, run_id, decision, run_dir, mtime):
    d = root / name
    d.mkdir(parents=True)
    p = d / "summary.json"
    p.write_text(json.dumps({"run_id": run_id, "decision": decision, "run_dir": str(run_dir),
                             "reasons": ["rank_ic_1d below threshold"]}))
    os.utime(p, (mtime, mtime))


def test_newest_rejected_picks_latest_day_with_weights(tmp_path):
    runs = tmp_path / "runs"
    for r in ("20240507-a", "20240508-b", "20240509-c", "20240510-d"):
        (runs / r).mkdir(parents=True)
        (runs / r / "model.safetensors").write_bytes(b"x")
    work = tmp_path / "work" / "atft_retrain"
    _summary(work, "2024-05-07", "20240507-a", "reject", runs / "20240507-a", 100)
    _summary(work, "2024-05-08", "20240508-b", "reject", runs / "20240508-b", 50)  # newer day wins
    _summary(work, "2024-05-09", "20240509-c", "promote", runs / "20240509-c", 300)  # not rejected
    _summary(work, "2024-05-09b", "20240509-x", "reject", runs / "missing", 400)  # no weights
    _summary(work, "2024-05-10", "20240510-d", "reject", runs / "20240510-d", 500)  # after D
    (work / "junk").mkdir()
    (work / "junk" / "summary.json").write_text("{not json")
    got = newest_rejected(work, dt.date(2024, 5, 9))
    assert got["run_id"] == "20240508-b" and got["reasons"] == ["rank_ic_1d below threshold"]
    assert newest_rejected(work, dt.date(2024, 5, 10))["run_id"] == "20240510-d"
    assert newest_rejected(work, dt.date(2024, 5, 6)) is None
    assert newest_rejected(tmp_path / "nowhere", dt.date(2024, 5, 9)) is None
