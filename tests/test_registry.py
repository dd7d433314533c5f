"""Registry contract tests, parametrised over file:// and s3:// (real moto server over HTTP)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import pickle
import threading
from pathlib import Path

import boto3
import pytest
import torch
from safetensors.torch import save_file

from atft_core.config import Config
from atft_core.registry import (
    ANY,
    AliasConflictError,
    BackendUnavailableError,
    IntegrityError,
    InvalidNameError,
    NotFoundError,
    PublishError,
    Registry,
    RegistryError,
    resolve_s3_settings,
)
from atft_core.registry.store import FileStore

pytest_plugins = ["s3_server"]  # moto S3 server fixtures (tests/s3_server.py)

MARKER_NAME = "PWNED"


# --------------------------------------------------------------------------- helpers
def make_run_dir(base: Path, run_id: str, seed: int = 0, n_floats: int = 256,
                 extra: dict[str, bytes] | None = None) -> Path:
    """A tiny trainer-like run directory (weights, config, metrics, report)."""
    d = base / run_id
    d.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    cfg_sha, value = Config().sha256(), 0.05 + seed / 1000
    # as the trainer writes them: weights metadata (JSON-encoded) and metrics.json agree
    save_file({"w": torch.randn(n_floats, generator=g), "b": torch.arange(4.0) + seed},
              str(d / "model.safetensors"),
              metadata={"config_sha256": json.dumps(cfg_sha), "epoch": "3",
                        "value": json.dumps(value)})
    (d / "config.yaml").write_text(Config().to_yaml())
    (d / "metrics.json").write_text(json.dumps({"rank_ic_1d": value, "config_sha256": cfg_sha,
                                                "best": {"epoch": 3, "value": value},
                                                "data_fingerprint": f"fp-{seed}"}))
    (d / "report.md").write_text(f"# run {run_id}\n")
    (d / "report_ic.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes([seed % 256]) * 32)
    (d / "checkpoints").mkdir()
    (d / "checkpoints" / "last.pt").write_bytes(b"not published")
    for name, data in (extra or {}).items():
        (d / name).write_bytes(data)
    return d


class _Payload:
    """Unpickling this writes a marker file: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "executed"))


def pickle_bomb(marker: Path) -> bytes:
    return pickle.dumps({"w": _Payload(marker)})


def all_keys(reg: Registry) -> list[str]:
    return reg.store.list_keys("")


def raw_put(reg: Registry, key: str, data: bytes) -> None:
    """Overwrite an object behind the registry's back (an attacker / bit rot)."""
    if isinstance(reg.store, FileStore):
        (reg.store.root / key).write_bytes(data)
    else:
        raw = boto3.client("s3", endpoint_url=reg.store.settings["endpoint_url"])
        raw.put_object(Bucket=reg.store.bucket, Key=f"{reg.store.prefix}/{key}", Body=data)


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.integration)])
def reg(request, tmp_path) -> Registry:
    if request.param == "file":
        return Registry(f"file://{tmp_path / 'registry'}", cache_dir=tmp_path / "cache")
    bucket = request.getfixturevalue("s3_bucket")
    endpoint = request.getfixturevalue("s3_endpoint")
    return Registry(f"s3://{bucket}/models/atft", endpoint_url=endpoint,
                    cache_dir=tmp_path / "cache")


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- publish / load
def test_publish_writes_manifest_of_every_file_and_load_roundtrips(reg, tmp_path):
    run = make_run_dir(tmp_path / "runs", "run-001", seed=1)
    res = reg.publish(run)
    m = res.manifest
    names = [f.name for f in m.files]
    assert names == sorted(["config.yaml", "metrics.json", "model.safetensors", "report.md",
                            "report_ic.png"])  # checkpoints/ not published
    for f in m.files:
        assert f.sha256 == sha(run / f.name) and f.size == (run / f.name).stat().st_size
    assert m.config_sha256 == Config().sha256()
    assert m.data_fingerprint == "fp-1"
    assert m.code_version["atft_core"] and "git_sha" in m.code_version
    keys = all_keys(reg)
    assert "runs/run-001/manifest.json" in keys and not any("checkpoints" in k for k in keys)

    loaded = reg.load_run("run-001")
    assert loaded.manifest_sha256 == res.manifest_sha256
    for f in m.files:
        assert (loaded.path / f.name).read_bytes() == (run / f.name).read_bytes()
    sd = loaded.state_dict()
    g = torch.Generator().manual_seed(1)
    torch.testing.assert_close(sd["w"], torch.randn(256, generator=g))
    assert [r.run_id for r in reg.list_runs()] == ["run-001"]


def test_publish_is_idempotent_and_run_ids_are_immutable(reg, tmp_path):
    run = make_run_dir(tmp_path / "a", "run-1", seed=1)
    first = reg.publish(run)
    again = reg.publish(run)
    assert again.already_published and again.manifest_sha256 == first.manifest_sha256
    other = make_run_dir(tmp_path / "b", "run-1", seed=2)
    with pytest.raises(PublishError, match="already published"):
        reg.publish(other)
    assert reg.load_run("run-1").manifest_sha256 == first.manifest_sha256


def test_publish_refuses_incomplete_or_invalid_dirs_without_writing(reg, tmp_path):
    run = make_run_dir(tmp_path, "run-x")
    (run / "metrics.json").unlink()
    with pytest.raises(PublishError, match="metrics.json"):
        reg.publish(run)
    run2 = make_run_dir(tmp_path, "run-y")
    (run2 / "config.yaml").write_text("model:\n  hidden_size: -3\n")
    with pytest.raises(PublishError, match="hidden_size"):
        reg.publish(run2)
    assert all_keys(reg) == []


# --------------------------------------------------------------------------- aliases
def _publish(reg, tmp_path, *ids):
    for i, rid in enumerate(ids):
        reg.publish(make_run_dir(tmp_path / "src", rid, seed=i))


def test_promote_rollback_show_history(reg, tmp_path):
    _publish(reg, tmp_path, "A", "B", "C")
    assert reg.get_alias() is None
    with pytest.raises(NotFoundError):
        reg.load_champion()
    a = reg.promote("A", reason="first", actor="t")
    b = reg.promote("B", reason="better", actor="t", expect="A", gate={"decision": "promote"})
    assert (a.seq, a.previous, b.seq, b.previous) == (1, None, 2, "A")
    with pytest.raises(AliasConflictError):
        reg.promote("C", reason="stale gate", actor="t", expect="A")
    with pytest.raises(NotFoundError, match="not published"):
        reg.promote("nope", reason="x", actor="t")
    assert reg.get_alias().run_id == "B"
    r1 = reg.rollback(reason="bad live metrics", actor="ops")
    assert (r1.run_id, r1.previous, r1.action) == ("A", "B", "rollback")
    r2 = reg.rollback(to="C", reason="pin", actor="ops")
    assert r2.run_id == "C"
    hist = reg.history()
    assert [h.run_id for h in hist] == ["A", "B", "A", "C"]
    assert [h.seq for h in hist] == [1, 2, 3, 4]
    assert all(h.previous == p.run_id for p, h in zip(hist, hist[1:]))
    assert hist[1].gate == {"decision": "promote"}
    shown = reg.show()
    assert shown["record"]["run_id"] == "C" and shown["manifest_sha256_matches"]
    champ = reg.load_champion()
    assert champ.run_id == "C" and champ.manifest_sha256 == r2.manifest_sha256
    assert {s.run_id: s.aliases for s in reg.list_runs()}["C"] == ("champion",)


def test_alias_pointing_to_other_manifest_is_refused(reg, tmp_path):
    _publish(reg, tmp_path, "A")
    rec = reg.promote("A", reason="r", actor="t")
    forged = dict(rec.to_dict(), manifest_sha256="0" * 64)
    raw_put(reg, "aliases/champion.json", json.dumps(forged).encode())
    with pytest.raises(IntegrityError, match="manifest.json sha256"):
        reg.load_champion()


# --------------------------------------------------------------------------- concurrency
N_PROMOTERS = 8


def _race(reg: Registry, ids: list[str], expect) -> tuple[list[str], list[str]]:
    barrier = threading.Barrier(len(ids))
    wins, losses = [], []
    lock = threading.Lock()

    def go(rid):
        barrier.wait(timeout=30)
        try:
            reg.promote(rid, reason="race", actor=f"w-{rid}", expect=expect, verify=False)
            with lock:
                wins.append(rid)
        except AliasConflictError:
            with lock:
                losses.append(rid)

    threads = [threading.Thread(target=go, args=(r,)) for r in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    return wins, losses


def _assert_history_consistent(reg: Registry) -> None:
    hist = reg.history()
    assert [h.seq for h in hist] == list(range(1, len(hist) + 1))
    assert all(h.previous == p.run_id for p, h in zip(hist, hist[1:]))
    assert hist[-1] == reg.get_alias()


@pytest.mark.slow
def test_concurrent_promotions_exactly_one_wins_per_round(reg, tmp_path):
    rounds = 3
    ids = [f"c{r}-{i}" for r in range(rounds) for i in range(N_PROMOTERS)]
    _publish(reg, tmp_path, "base", *ids)
    reg.promote("base", reason="init", actor="t")
    for r in range(rounds):
        current = reg.get_alias().run_id
        wins, losses = _race(reg, ids[r * N_PROMOTERS:(r + 1) * N_PROMOTERS], expect=current)
        assert len(wins) == 1 and len(losses) == N_PROMOTERS - 1
        rec = reg.get_alias()
        assert rec.run_id == wins[0] and rec.previous == current
        champ = reg.load_champion()  # alias -> complete manifest, every file verified
        assert champ.run_id == wins[0]
    _assert_history_consistent(reg)
    assert len(reg.history()) == 1 + rounds


@pytest.mark.slow
def test_concurrent_unconditional_promotions_lose_no_update(reg, tmp_path):
    ids = [f"u{i}" for i in range(N_PROMOTERS)]
    _publish(reg, tmp_path, *ids)
    wins, losses = _race(reg, ids, expect=ANY)
    assert sorted(wins) == sorted(ids) and not losses  # each CAS retried until it landed
    hist = reg.history()
    assert sorted(h.run_id for h in hist) == sorted(ids)
    _assert_history_consistent(reg)


def _proc_promote(root: str, rid: str, expect: str, q) -> None:
    try:
        Registry(root).promote(rid, reason="proc", actor=rid, expect=expect, verify=False)
        q.put(("win", rid))
    except AliasConflictError:
        q.put(("lose", rid))


def test_file_backend_processes_race(tmp_path):
    reg = Registry(f"file://{tmp_path / 'reg'}")
    ids = [f"p{i}" for i in range(N_PROMOTERS)]
    _publish(reg, tmp_path, "base", *ids)
    reg.promote("base", reason="init", actor="t")
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_proc_promote, args=(reg.uri, r, "base", q)) for r in ids]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert sum(1 for k, _ in results if k == "win") == 1
    _assert_history_consistent(reg)


# --------------------------------------------------------------------------- faults
class _Outage:
    """Fail every request from the Nth on, like a server that went away mid-publish."""

    def __init__(self, reg: Registry, fail_from: int) -> None:
        self.reg, self.fail_from, self.n, self.active = reg, fail_from, 0, True
        self._orig = None

    def __enter__(self):
        if isinstance(self.reg.store, FileStore):
            store, orig = self.reg.store, self.reg.store.put_file
            self._orig = orig

            def put_file(*a, **k):
                self.n += 1
                if self.active and self.n >= self.fail_from:
                    raise OSError("disk went away")
                return orig(*a, **k)

            store.put_file = put_file
        else:
            from botocore.exceptions import EndpointConnectionError

            def boom(request, **_):
                self.n += 1
                if self.active and self.n >= self.fail_from:
                    raise EndpointConnectionError(endpoint_url=request.url)

            self._hook = boom
            self.reg.store.client.meta.events.register("before-send.s3", boom)
        return self

    def __exit__(self, *exc):
        self.active = False
        if isinstance(self.reg.store, FileStore):
            del self.reg.store.put_file
        else:
            self.reg.store.client.meta.events.unregister("before-send.s3", self._hook)


def test_interrupted_publish_leaves_no_manifest_and_retry_completes(reg, tmp_path):
    _publish(reg, tmp_path, "A")
    reg.promote("A", reason="r", actor="t")
    before = reg.get_alias()
    run = make_run_dir(tmp_path / "new", "B", seed=7)
    with _Outage(reg, fail_from=3), pytest.raises(Exception) as err:  # noqa: PT011
        reg.publish(run)
    assert not isinstance(err.value, AssertionError)
    keys = all_keys(reg)
    assert "runs/B/manifest.json" not in keys
    assert any(k.startswith("runs/B/") for k in keys)  # something was written before the cut
    assert reg.get_alias() == before
    with pytest.raises(NotFoundError, match="not published"):
        reg.load_run("B")
    with pytest.raises(NotFoundError):
        reg.promote("B", reason="r", actor="t")
    res = reg.publish(run)  # retry: reuses what is there, finishes
    assert res.reused and not res.already_published
    assert reg.load_run("B").state_dict()["b"][0].item() == 7.0


def test_alias_write_failure_leaves_alias_unchanged(reg, tmp_path):
    _publish(reg, tmp_path, "A", "B")
    reg.promote("A", reason="r", actor="t")
    before = reg.get_alias()
    if isinstance(reg.store, FileStore):
        orig = reg.store.put_bytes

        def failing(key, *a, **k):
            if key == "aliases/champion.json":
                raise OSError("crash")
            return orig(key, *a, **k)

        reg.store.put_bytes = failing
        with pytest.raises(OSError):
            reg.promote("B", reason="r", actor="t", verify=False)
        del reg.store.put_bytes
    else:
        from botocore.exceptions import EndpointConnectionError

        def cut(request, **_):
            if "aliases/champion.json" in request.url:
                raise EndpointConnectionError(endpoint_url=request.url)

        events = reg.store.client.meta.events
        events.register("before-send.s3.PutObject", cut)
        try:
            # the store turns transport errors into one line naming the endpoint
            with pytest.raises(BackendUnavailableError, match="unreachable during PutObject"):
                reg.promote("B", reason="r", actor="t", verify=False)
        finally:
            events.unregister("before-send.s3.PutObject", cut)
    assert reg.get_alias() == before
    _assert_history_consistent(reg)


def test_crash_between_cas_and_history_is_repaired(reg, tmp_path, monkeypatch):
    _publish(reg, tmp_path, "A", "B", "C")
    reg.promote("A", reason="r", actor="t")
    orig = Registry._ensure_history
    calls = {"n": 0}

    def flaky(self, rec):
        calls["n"] += 1
        if rec.run_id == "B":
            raise OSError("crashed after the CAS")
        return orig(self, rec)

    monkeypatch.setattr(Registry, "_ensure_history", flaky)
    with pytest.raises(OSError):
        reg.promote("B", reason="r", actor="t", verify=False)
    monkeypatch.setattr(Registry, "_ensure_history", orig)
    assert reg.get_alias().run_id == "B" and [h.run_id for h in reg.history()] == ["A"]
    reg.promote("C", reason="r", actor="t", verify=False)
    assert [h.run_id for h in reg.history()] == ["A", "B", "C"]
    _assert_history_consistent(reg)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupted_or_truncated_object_is_refused_at_load(reg, tmp_path, damage):
    run = make_run_dir(tmp_path, "R", n_floats=4096)
    reg.publish(run)
    reg.promote("R", reason="r", actor="t")
    data = bytearray((run / "model.safetensors").read_bytes())
    if damage == "flip":
        data[-100] ^= 0xFF
        want = "sha256"
    else:
        data = data[: len(data) // 2]
        want = "truncated"
    raw_put(reg, "runs/R/model.safetensors", bytes(data))
    dest = tmp_path / "dest"
    with pytest.raises(IntegrityError, match=want):
        reg.load_run("R", dest)
    assert not dest.exists()  # no half-copied directory left behind
    with pytest.raises(IntegrityError):
        reg.load_champion()
    _publish(reg, tmp_path, "S")
    with pytest.raises(IntegrityError):
        reg.rollback(to="R", reason="r", actor="t")  # promotion verifies too
    assert reg.get_alias().run_id == "R"


def test_pickle_payloads_are_never_executed(reg, tmp_path):
    marker = tmp_path / MARKER_NAME
    bomb = pickle_bomb(marker)
    # sanity of the test itself: unpickling really would write the marker
    probe = tmp_path / "probe"
    pickle.loads(pickle_bomb(probe))
    assert probe.exists()

    # 1) a .pt next to the weights is not publishable: ignored, never uploaded
    run = make_run_dir(tmp_path / "s1", "P1", extra={"model.pt": bomb})
    reg.publish(run)
    assert "runs/P1/model.pt" not in all_keys(reg)
    # 2) pickle bytes disguised as model.safetensors: refused at publish
    run2 = make_run_dir(tmp_path / "s2", "P2")
    (run2 / "model.safetensors").write_bytes(bomb)
    with pytest.raises(PublishError, match="safetensors"):
        reg.publish(run2)
    # 3) an attacker swaps weights AND a consistent manifest in storage: checksums pass,
    #    safetensors refuses the bytes, nothing is unpickled
    man, _ = reg.read_manifest("P1")
    doc = json.loads(man.to_bytes())
    for f in doc["files"]:
        if f["name"] == "model.safetensors":
            f["sha256"], f["size"] = hashlib.sha256(bomb).hexdigest(), len(bomb)
    raw_put(reg, "runs/P1/model.safetensors", bomb)
    raw_put(reg, "runs/P1/manifest.json", json.dumps(doc).encode())
    loaded = reg.load_run("P1")
    with pytest.raises(IntegrityError, match="not valid safetensors"):
        loaded.state_dict()
    # 4) a manifest that lists a pickle file is refused outright
    doc["files"].append({"name": "model.pt", "size": len(bomb),
                         "sha256": hashlib.sha256(bomb).hexdigest()})
    raw_put(reg, "runs/P1/manifest.json", json.dumps(doc).encode())
    with pytest.raises(IntegrityError, match="not publishable"):
        reg.load_run("P1")
    assert not marker.exists()


# --------------------------------------------------------------------------- hostile names
HOSTILE = ["..", "../evil", "a/../../b", "/etc/passwd", "a/b", "a\\b", "a b", "", ".hidden",
           "x" * 200, "ünï", "a..b", "run\x00id", "-rf", "~root", "%2e%2e"]


def test_hostile_names_refused_before_any_write(reg, tmp_path):
    run = make_run_dir(tmp_path / "src", "ok-run")
    before = sorted(p.name for p in tmp_path.iterdir())
    for bad in HOSTILE:
        with pytest.raises(InvalidNameError):
            reg.publish(run, run_id=bad)
    assert all_keys(reg) == []
    reg.publish(run)
    for bad in HOSTILE:
        for fn, args, kwargs in ((reg.promote, (bad,), {"reason": "r", "actor": "t"}),
                                 (reg.promote, ("ok-run",), {"reason": "r", "actor": "t",
                                                             "alias": bad}),
                                 (reg.rollback, (), {"to": bad, "reason": "r", "actor": "t"}),
                                 (reg.load_run, (bad,), {}),
                                 (reg.load_champion, (), {"alias": bad}),
                                 (reg.history, (), {"alias": bad})):
            with pytest.raises(InvalidNameError):
                fn(*args, **kwargs)
    assert [k for k in all_keys(reg) if not k.startswith("runs/ok-run/")] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing escaped the root


def test_store_rejects_traversal_keys_directly(tmp_path):
    store = FileStore(tmp_path / "root")
    for key in ("../x", "runs/../../x", "/abs", "runs//x"):
        with pytest.raises(InvalidNameError):
            store.put_bytes(key, b"x")
    assert list((tmp_path).iterdir()) == [tmp_path / "root"]


# --------------------------------------------------------------------------- config / uris
def test_file_uri_relative_to_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reg = Registry("file://var/registry")
    assert reg.store.root == tmp_path / "var" / "registry"
    cfg = Config().registry
    assert Registry.from_config(cfg).store.root == tmp_path / "var" / "registry"
    with pytest.raises(RegistryError, match="expected file://"):
        Registry("gs://bucket")


def test_resolve_s3_settings_precedence():
    conn_json = json.dumps({"conn_type": "aws", "login": "AK", "password": "SK",
                            "extra": {"endpoint_url": "http://minio:9000", "region_name": "x-1"}})
    s = resolve_s3_settings(env={"AIRFLOW_CONN_AWS_DEFAULT": conn_json})
    assert (s["endpoint_url"], s["source"], s["region_name"]) == ("http://minio:9000",
                                                                 "AIRFLOW_CONN_AWS_DEFAULT", "x-1")
    assert (s["aws_access_key_id"], s["aws_secret_access_key"]) == ("AK", "SK")
    uri = "aws://AK%2F1:S%2BK@/?endpoint_url=http%3A%2F%2Fseaweed%3A8333&region_name=ap-1"
    s = resolve_s3_settings(env={"AIRFLOW_CONN_AWS_DEFAULT": uri})
    assert (s["endpoint_url"], s["aws_access_key_id"], s["aws_secret_access_key"]) == (
        "http://seaweed:8333", "AK/1", "S+K")
    uri2 = "aws://?__extra__=" + '{"service_config": {"s3": {"endpoint_url": "http://m:1"}}}'
    assert resolve_s3_settings(env={"AIRFLOW_CONN_AWS_DEFAULT": uri2})["endpoint_url"] == "http://m:1"
    env = {"AIRFLOW_CONN_AWS_DEFAULT": conn_json, "AWS_ENDPOINT_URL": "http://env:1",
           "AWS_ACCESS_KEY_ID": "envkey"}
    s = resolve_s3_settings(env=env)
    assert s["endpoint_url"] == "http://env:1" and "aws_access_key_id" not in s
    assert resolve_s3_settings("http://arg:2", env=env)["source"] == "argument"
    assert resolve_s3_settings(env={})["endpoint_url"] is None


@pytest.mark.integration
def test_s3_via_airflow_connection_env_and_multipart(s3_bucket, s3_endpoint, tmp_path,
                                                     monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT",
                       json.dumps({"conn_type": "aws", "extra": {"endpoint_url": s3_endpoint}}))
    reg = Registry(f"s3://{s3_bucket}/p", multipart_threshold_mb=5, multipart_chunksize_mb=5)
    assert reg.store.settings["source"] == "AIRFLOW_CONN_AWS_DEFAULT"
    run = make_run_dir(tmp_path, "big", n_floats=3 * 1024 * 1024)  # 12 MB -> 3 parts
    reg.publish(run)
    head = reg.store.client.head_object(Bucket=s3_bucket, Key="p/runs/big/model.safetensors",
                                        ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-3")  # multipart upload
    assert "ChecksumSHA256" in head
    with pytest.raises(Exception, match="PreconditionFailed|already exists"):  # noqa: PT011
        reg.store.put_file("runs/big/model.safetensors", run / "model.safetensors", sha256="x")
    assert reg.load_run("big").state_dict()["w"].numel() == 3 * 1024 * 1024


def test_publish_reports_byte_progress_to_the_log(reg, tmp_path, caplog, monkeypatch):
    """Issue 13 item 4: a publish logs its progress (log lines in a task log, a bar on a terminal);
    the bytes reported add up to the run's published files exactly, over the file store and over
    S3's transfer manager (its per-chunk subscriber callbacks)."""
    import logging

    import atft_core.progress as progress_mod

    seen: list[int] = []
    real = progress_mod.byte_progress

    def spy(total, desc, **kw):  # wraps the real reporter: counts the bytes it is given
        cm = real(total, desc, **kw)

        class Wrapped:
            def __enter__(self):
                upd = cm.__enter__()
                seen.append(total)
                return lambda n: (seen.append(-int(n)), upd(n))

            def __exit__(self, *exc):
                return cm.__exit__(*exc)

        return Wrapped()

    import atft_core.registry.registry as registry_mod

    monkeypatch.setattr(registry_mod, "byte_progress", spy)
    run = make_run_dir(tmp_path / "p", "P", n_floats=300_000)  # ~1.2 MB of weights
    total = sum(f.stat().st_size for f in run.iterdir() if f.is_file() and f.name != "checkpoints")
    with caplog.at_level(logging.INFO, logger="atft.registry"):
        reg.publish(run, progress=False)
    assert seen[0] == sum(f.size for f in reg.read_manifest("P")[0].files)
    assert -sum(seen[1:]) == seen[0] and seen[0] <= total
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("publish P -> ")]
    assert lines and "(100%)" in lines[-1] and "MB/s" in lines[-1]


# --------------------------------------------------------------------------- CLI
def test_cli_publish_promote_show_list_verify_rollback(tmp_path, capsys):
    from atft_core.cli import main

    uri = f"file://{tmp_path / 'reg'}"
    for i, rid in enumerate(("A", "B")):
        run = make_run_dir(tmp_path / "src", rid, seed=i)
        assert main(["registry", "publish", str(run), "--uri", uri]) == 0
    assert main(["registry", "promote", "A", "--uri", uri, "--reason", "first",
                 "--actor", "me"]) == 0
    assert main(["registry", "promote", "B", "--uri", uri, "--reason", "x", "--actor", "me",
                 "--expect", "B"]) == 3  # CAS lost: exit code 3
    capsys.readouterr()
    assert main(["registry", "show", "--uri", uri]) == 0
    assert json.loads(capsys.readouterr().out)["record"]["run_id"] == "A"
    assert main(["registry", "promote", "B", "--uri", uri, "--reason", "x", "--actor", "me"]) == 0
    assert main(["registry", "verify", "champion", "--uri", uri]) == 0
    assert main(["registry", "rollback", "--uri", uri, "--reason", "oops", "--actor", "me"]) == 0
    capsys.readouterr()
    assert main(["registry", "list", "--uri", uri]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["run_id"]: r["aliases"] for r in rows["runs"]} == {"A": ["champion"], "B": []}
    assert [h["run_id"] for h in rows["history"]] == ["A", "B", "A"]
    assert main(["registry", "promote", "../x", "--uri", uri, "--reason", "x",
                 "--actor", "me"]) == 2


def test_concurrent_publishers_of_the_same_run_agree(reg, tmp_path):
    run = make_run_dir(tmp_path, "same", seed=3)
    results, errors = [], []
    barrier = threading.Barrier(4)

    def go():
        barrier.wait(timeout=30)
        try:
            results.append(reg.publish(run))
        except Exception as err:  # noqa: BLE001 -- collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert sum(not r.already_published for r in results) == 1  # one manifest write won
    assert len({r.manifest_sha256 for r in results}) == 1
    assert reg.load_run("same").manifest_sha256 == results[0].manifest_sha256


@pytest.mark.integration
@pytest.mark.slow
def test_s3_server_stopped_mid_publish_then_retry(s3_env, tmp_path):
    """A real outage: the server process is frozen (SIGSTOP) after the first uploads."""
    import signal

    from atft_core.registry.locals3 import local_s3_process

    with local_s3_process() as (url, proc):
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="outage")
        reg = Registry("s3://outage/r", endpoint_url=url, read_timeout_s=1.0,
                       connect_timeout_s=1.0, max_attempts=2)
        _publish(reg, tmp_path, "A")
        reg.promote("A", reason="r", actor="t")
        before = reg.get_alias()
        run = make_run_dir(tmp_path / "new", "B", seed=5)
        puts = {"n": 0}

        def freeze_after_two(request, **_):
            puts["n"] += 1
            if puts["n"] == 3:
                os.kill(proc.pid, signal.SIGSTOP)

        events = reg.store.client.meta.events
        events.register("before-send.s3.PutObject", freeze_after_two)
        try:
            with pytest.raises(Exception) as err:  # noqa: PT011 -- botocore timeout types vary
                reg.publish(run)
            assert "timeout" in type(err.value).__name__.lower() or "timed out" in str(err.value)
        finally:
            events.unregister("before-send.s3.PutObject", freeze_after_two)
            os.kill(proc.pid, signal.SIGCONT)
        assert "runs/B/manifest.json" not in all_keys(reg)
        assert reg.get_alias() == before
        res = reg.publish(run)  # server back: the retry completes
        assert not res.already_published and res.reused
        assert reg.load_run("B").state_dict()["b"][0].item() == 5.0
