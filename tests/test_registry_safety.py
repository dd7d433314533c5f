"""Registry backend safety (issue 14 / issue 12 fault 11): the self-check refuses a backend that
ignores conditional writes, and every S3 call ends within its total deadline with one line."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
from s3_proxy import HeaderStrippingProxy, SilentServer
from test_registry import all_keys, make_run_dir, reg  # noqa: F401  (reg: file + s3 fixture)

from atft_core.registry import (
    BackendUnavailableError,
    Registry,
    UnsafeBackendError,
)
from atft_core.registry import selfcheck as selfcheck_mod

pytest_plugins = ["s3_server"]


@pytest.fixture(autouse=True)
def _fresh_selfcheck_cache():
    selfcheck_mod.forget_cached_checks()
    yield
    selfcheck_mod.forget_cached_checks()


@pytest.fixture
def stripping_proxy(s3_endpoint):
    proxy = HeaderStrippingProxy(s3_endpoint)
    yield proxy
    proxy.close()


@pytest.fixture
def silent_server():
    srv = SilentServer()
    yield srv
    srv.close()


def _cli(*args: str, env_extra: dict[str, str] | None = None, timeout: float = 60):
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "atft_core.cli", "registry", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


# --------------------------------------------------------------------------- self-check
def test_selfcheck_passes_on_enforcing_backends_and_cleans_up(reg):  # noqa: F811
    res = reg.check_backend()
    assert res.ok and res.create_only and res.compare_and_swap, res
    assert res.problems == () and res.cleanup_errors == ()
    assert all_keys(reg) == []  # scratch objects removed, nothing else written
    assert res.uri == reg.uri
    if reg.uri.startswith("s3://"):
        assert reg.store.settings["endpoint_url"] in res.server


def test_selfcheck_runs_once_per_backend_and_process(reg, tmp_path, monkeypatch):  # noqa: F811
    calls = []
    real = selfcheck_mod.probe
    monkeypatch.setattr(selfcheck_mod, "probe", lambda store: calls.append(store.uri) or real(store))
    for i, rid in enumerate(("A", "B", "C")):
        reg.publish(make_run_dir(tmp_path / "src", rid, seed=i))
    reg.promote("A", reason="r", actor="t")
    reg.promote("B", reason="r", actor="t")
    assert calls == [reg.uri]


def test_header_stripping_server_is_refused_nothing_published_champion_unchanged(
        s3_bucket, s3_endpoint, stripping_proxy, tmp_path):
    uri = f"s3://{s3_bucket}/models"
    direct = Registry(uri, endpoint_url=s3_endpoint, cache_dir=tmp_path / "c1")
    direct.publish(make_run_dir(tmp_path / "src", "A", seed=1))
    direct.promote("A", reason="first", actor="t")
    before_alias, before_keys = direct.get_alias(), all_keys(direct)

    bad = Registry(uri, endpoint_url=stripping_proxy.url, cache_dir=tmp_path / "c2")
    res = bad.check_backend()
    assert (res.ok, res.create_only, res.compare_and_swap) == (False, False, False)
    assert {h for _, h in stripping_proxy.stripped} == {"if-none-match", "if-match"}
    line = res.line()
    assert stripping_proxy.url in line and "\n" not in line
    assert "create-only" in line and "compare-and-swap" in line
    assert all_keys(direct) == before_keys  # the probe cleaned up after itself

    run_b = make_run_dir(tmp_path / "src", "B", seed=2)
    with pytest.raises(UnsafeBackendError, match=stripping_proxy.url.replace(".", r"\.")):
        bad.publish(run_b)
    with pytest.raises(UnsafeBackendError):
        bad.promote("A", reason="again", actor="t")
    with pytest.raises(UnsafeBackendError):
        bad.rollback(to="A", reason="r", actor="t")
    assert all_keys(direct) == before_keys  # nothing under runs/B, no alias move
    assert direct.get_alias() == before_alias

    # the explicit opt-in writes anyway (and says so once)
    unsafe = Registry(uri, endpoint_url=stripping_proxy.url, cache_dir=tmp_path / "c3",
                      allow_unsafe_backend=True)
    assert unsafe.publish(run_b).manifest.run_id == "B"


@pytest.mark.slow  # three CLI subprocesses (~12 s on the shared 2-core box)
def test_cli_check_and_publish_refuse_the_stripping_server(s3_bucket, stripping_proxy, tmp_path,
                                                          s3_endpoint):
    env = {"AWS_ENDPOINT_URL": stripping_proxy.url}
    uri = f"s3://{s3_bucket}/cli"
    proc = _cli("check", "--uri", uri, env_extra=env)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("atft registry: UnsafeBackendError: ") and stripping_proxy.url in line
    proc = _cli("publish", str(make_run_dir(tmp_path, "R1")), "--uri", uri, env_extra=env)
    assert proc.returncode == 1 and "does not enforce create-only" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    ok = _cli("check", "--uri", uri, env_extra={"AWS_ENDPOINT_URL": s3_endpoint})
    assert ok.returncode == 0, ok.stderr
    assert '"ok": true' in ok.stdout


# --------------------------------------------------------------------------- deadlines
def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_never_answering_endpoint_ends_within_the_deadline(s3_env, silent_server, tmp_path):
    reg_ = Registry("s3://bucket/p", endpoint_url=silent_server.url, deadline_s=0.5)
    for call in (reg_.get_alias, reg_.list_runs, reg_.check_backend,
                 lambda: reg_.publish(make_run_dir(tmp_path, "R"))):
        t0 = time.monotonic()
        with pytest.raises(BackendUnavailableError) as err:
            call()
        elapsed = time.monotonic() - t0
        assert elapsed < 0.5 + 1.5, elapsed  # the deadline, plus thread start/teardown slack
        msg = str(err.value)
        assert silent_server.url in msg and "within the 0.5 s deadline" in msg and "\n" not in msg
    assert silent_server.accepted  # the client really connected and waited


def test_unreachable_endpoint_and_missing_bucket_are_one_line(s3_env, s3_endpoint, tmp_path):
    dead = f"http://127.0.0.1:{_free_port()}"
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailableError, match="is unreachable") as err:
        Registry("s3://bucket/p", endpoint_url=dead, deadline_s=2.0).get_alias()
    assert time.monotonic() - t0 < 2.0 + 1.5
    assert dead in str(err.value)

    nob = Registry("s3://no-such-bucket-atft/p", endpoint_url=s3_endpoint, deadline_s=5.0)
    for call in (nob.get_alias, nob.list_runs, lambda: nob.publish(make_run_dir(tmp_path, "R"))):
        with pytest.raises(BackendUnavailableError,
                           match="bucket 'no-such-bucket-atft' does not exist"):
            call()


def test_cli_never_answering_endpoint_one_line_within_config_deadline(s3_env, silent_server,
                                                                     tmp_path):
    cfg = tmp_path / "deadline.yaml"
    cfg.write_text("registry:\n  s3_deadline_s: 1.5\n")
    t0 = time.monotonic()
    proc = _cli("show", "--config", str(cfg), "--uri", "s3://bucket/p",
                env_extra={"AWS_ENDPOINT_URL": silent_server.url})
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("atft registry: BackendUnavailableError: ")
    assert "gave no answer" in line and "1.5 s deadline" in line
    assert elapsed < 1.5 + 8.0, elapsed  # interpreter + boto3 import dominate the slack


def test_deadline_must_be_positive_and_finite():
    from atft_core.config import ConfigError, load_config

    for bad in ("0", "-1", ".nan", "1e9"):
        with pytest.raises(ConfigError, match="s3_deadline_s"):
            load_config("default", [f"registry.s3_deadline_s={bad}"])
