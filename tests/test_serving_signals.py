"""Signal files (atft_core.serving.signals) on file:// and S3 (local moto server): create-only,
idempotent for the same bytes, refused for other bytes, never overwritten, verified on read."""

from __future__ import annotations

import datetime as dt
import hashlib

import polars as pl
import pytest

from atft_core.registry import IntegrityError, Registry
from atft_core.serving.predict import DaySignal, rank_frame
from atft_core.serving.signals import (
    SignalConflictError,
    list_signals,
    publish_signal,
    read_signal,
    read_signals,
    signal_keys,
)

pytest_plugins = ["s3_server"]
H = (1, 5)


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.integration)])
def reg(request, tmp_path) -> Registry:
    if request.param == "file":
        return Registry(f"file://{tmp_path / 'registry'}")
    bucket = request.getfixturevalue("s3_bucket")
    return Registry(f"s3://{bucket}/models/atft", endpoint_url=request.getfixturevalue("s3_endpoint"))


def _signal(day: dt.date, run_id: str = "r1", shift: float = 0.0) -> DaySignal:
    preds = pl.DataFrame({"Date": [day] * 4, "Code": ["1301", "1332", "7203", "9984"],
                          "pred_1d": [0.3 + shift, -0.1, 0.2, 0.2], "pred_5d": [0.0, 1.0, 2.0, -1.0]})
    return DaySignal(day=day, run_id=run_id, horizons=H, frame=rank_frame(preds, H),
                     data_fingerprint="f" * 64, manifest_sha256="m" * 64)


def test_ranks_within_the_day_ties_by_code():
    f = _signal(dt.date(2024, 5, 8)).frame
    assert f["rank_1d"].to_list() == [1, 4, 2, 3]  # 0.2 tie: 7203 before 9984
    assert f["rank_5d"].to_list() == [3, 2, 1, 4]
    assert f.schema["rank_1d"] == pl.Int32


def test_publish_idempotent_conflict_and_read(reg):
    day = dt.date(2024, 5, 8)
    sig = _signal(day)
    rec = publish_signal(reg, sig)
    assert not rec.already_published and rec.key == "signals/2024-05-08/r1.parquet"
    assert rec.sha256 == hashlib.sha256(sig.to_parquet_bytes()).hexdigest()
    assert rec.manifest["model_manifest_sha256"] == "m" * 64 and rec.manifest["rows"] == 4
    again = publish_signal(reg, _signal(day))
    assert again.already_published and again.sha256 == rec.sha256
    with pytest.raises(SignalConflictError, match="nothing was written"):
        publish_signal(reg, _signal(day, shift=0.5))
    data, _ = reg.store.get_bytes(rec.key)
    assert hashlib.sha256(data).hexdigest() == rec.sha256  # untouched
    publish_signal(reg, _signal(day, "s1"), role="shadow")
    publish_signal(reg, _signal(dt.date(2024, 5, 9)))
    assert list_signals(reg) == [(day, "r1"), (dt.date(2024, 5, 9), "r1")]
    assert list_signals(reg, "shadow") == [(day, "s1")]
    back = read_signals(reg, start=day, end=day)
    assert back.drop("run_id").equals(sig.frame) and back["run_id"].unique().to_list() == ["r1"]
    assert read_signals(reg, start=dt.date(2030, 1, 1)) is None


def test_parquet_written_but_manifest_missing_is_completed(reg):
    """A publish interrupted after the data write: the retry completes it (same bytes)."""
    day = dt.date(2024, 5, 10)
    sig = _signal(day)
    pkey, mkey = signal_keys(day, "r1")
    reg._before_write()
    reg.store.put_bytes(pkey, sig.to_parquet_bytes(), if_none_match=True)
    assert list_signals(reg) == []  # no manifest: not published
    assert not publish_signal(reg, sig).already_published
    assert list_signals(reg) == [(day, "r1")]


def test_tampered_signal_fails_on_read(tmp_path):
    reg = Registry(f"file://{tmp_path / 'registry'}")
    day = dt.date(2024, 5, 8)
    rec = publish_signal(reg, _signal(day))
    path = tmp_path / "registry" / rec.key
    path.chmod(0o644)
    path.write_bytes(_signal(day, shift=1.0).to_parquet_bytes())
    with pytest.raises(IntegrityError, match="sha256"):
        read_signal(reg, day, "r1")


def test_bad_names_refused_before_any_write(tmp_path):
    reg = Registry(f"file://{tmp_path / 'registry'}")
    with pytest.raises(ValueError):
        publish_signal(reg, _signal(dt.date(2024, 5, 8), run_id="../x"))
    with pytest.raises(ValueError, match="role"):
        publish_signal(reg, _signal(dt.date(2024, 5, 8)), role="served")
    assert not (tmp_path / "registry" / "signals").exists()
