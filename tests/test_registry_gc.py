"""`atft registry gc` (issue 14): a publish SIGKILLed halfway leaves an orphan run (files, no
manifest); gc lists it (dry run), removes only it with --apply, and never touches a published
run or anything an alias or its history names. file:// and s3:// (moto over HTTP)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_registry import all_keys, make_run_dir, reg  # noqa: F401  (reg: file + s3 fixture)

from atft_core.registry import Registry, parse_duration
from atft_core.registry.store import FileStore

pytest_plugins = ["s3_server"]

# Publishes RUN_DIR as RUN_ID and SIGKILLs itself half-way: after the first data file is in
# place (file://: while the second file sits in its temp file, not yet linked).
KILLER = textwrap.dedent("""
    import os, signal, sys
    from atft_core.registry import Registry
    uri, endpoint, run_dir, run_id = sys.argv[1:5]
    reg = Registry(uri, endpoint_url=endpoint) if endpoint else Registry(uri)
    if uri.startswith("file://"):
        real_link, calls = os.link, []
        def link_then_die(src, dst):
            if "/runs/" in str(dst):  # not the self-check's scratch objects
                calls.append(dst)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_link(src, dst)
        os.link = link_then_die
    else:
        real_put = reg.store.put_file
        def put_then_die(key, path, *, sha256, on_bytes=None):
            real_put(key, path, sha256=sha256, on_bytes=on_bytes)
            os.kill(os.getpid(), signal.SIGKILL)
        reg.store.put_file = put_then_die
    reg.publish(run_dir, run_id)
    print("publish finished: the kill did not happen")
""")


def publish_killed_halfway(reg: Registry, run_dir: Path, run_id: str) -> None:  # noqa: F811
    endpoint = reg.store.settings["endpoint_url"] if hasattr(reg.store, "settings") else ""
    proc = subprocess.run([sys.executable, "-c", KILLER, reg.uri, endpoint or "", str(run_dir),
                           run_id], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr)


def raw_delete(reg: Registry, key: str) -> None:  # noqa: F811
    reg.store.delete(key)


def test_parse_duration():
    assert [parse_duration(t) for t in ("90", "90s", "30m", "12h", "1d", "2w", "0")] == \
        [90, 90, 1800, 43200, 86400, 1209600, 0]
    for bad in ("", "1y", "-1d", "d", "1 d2"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_gc_removes_only_the_orphan_of_a_killed_publish(reg, tmp_path):  # noqa: F811
    src = tmp_path / "src"
    for i, rid in enumerate(("A", "B", "P")):
        reg.publish(make_run_dir(src, rid, seed=i))
    for rid in ("A", "P", "B"):  # history names A, P, B; champion B
        reg.promote(rid, reason="r", actor="t")
    # P loses its manifest (damage): manifest-less, but alias history names it -> protected
    raw_delete(reg, "runs/P/manifest.json")
    publish_killed_halfway(reg, make_run_dir(src, "C", seed=3), "C")

    keys_c = [k for k in all_keys(reg) if k.startswith("runs/C/")]
    assert len(keys_c) == 1 and "runs/C/manifest.json" not in keys_c  # one file, then killed
    if isinstance(reg.store, FileStore):
        temps = list((reg.store.root / "runs" / "C").glob(".tmp-*"))
        assert len(temps) == 1  # the second file, written but never linked

    before = all_keys(reg)
    champion = reg.get_alias()

    # default --older-than 1d: the fresh orphan is too young, nothing listed for removal
    rep = reg.gc()
    assert (rep.orphans, rep.too_young, rep.protected, rep.published) == ([], ["C"], ["P"], 2)

    # dry run lists C with its files and bytes, removes nothing
    rep = reg.gc(older_than_s=0)
    assert [o.run_id for o in rep.orphans] == ["C"] and not rep.applied and rep.removed == []
    (orphan,) = rep.orphans
    assert list(orphan.keys) == keys_c
    assert orphan.bytes == sum((src / "C" / Path(k).name).stat().st_size for k in keys_c)
    assert len(orphan.leftovers) == (1 if isinstance(reg.store, FileStore) else 0)
    assert all_keys(reg) == before

    rep = reg.gc(older_than_s=0, apply=True)
    assert rep.removed == ["C"] and rep.raced == []
    assert all_keys(reg) == sorted(set(before) - set(keys_c))  # exactly C's files went
    if isinstance(reg.store, FileStore):
        assert not (reg.store.root / "runs" / "C").exists()  # temp file and directory too
    assert reg.get_alias() == champion
    loaded = reg.load_champion()
    assert loaded.run_id == "B"
    assert reg.gc(older_than_s=0).orphans == []  # idempotent

    # the run id is free again: a retried publish completes
    assert reg.publish(src / "C").manifest.run_id == "C"
    assert reg.gc(older_than_s=0).published == 3


def test_gc_refuses_when_an_alias_record_is_unreadable(tmp_path):
    reg_ = Registry(f"file://{tmp_path / 'reg'}")
    reg_.publish(make_run_dir(tmp_path / "src", "A"))
    reg_.promote("A", reason="r", actor="t")
    (reg_.store.root / "aliases" / "champion.json").write_text("{not json")
    from atft_core.registry import RegistryError

    with pytest.raises(RegistryError, match="cannot read alias record"):
        reg_.gc(older_than_s=0, apply=True)
    assert "runs/A/manifest.json" in all_keys(reg_)


def test_cli_gc_dry_run_then_apply(tmp_path):
    uri = f"file://{tmp_path / 'reg'}"
    reg_ = Registry(uri)
    reg_.publish(make_run_dir(tmp_path / "src", "A"))
    publish_killed_halfway(reg_, make_run_dir(tmp_path / "src", "B", seed=1), "B")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "atft_core.cli", "registry", "gc",
                               "--uri", uri, *args], capture_output=True, text=True, timeout=120,
                              env={**os.environ})

    dry = cli("--older-than", "0s")
    assert dry.returncode == 0, dry.stderr
    out = json.loads(dry.stdout)
    assert out["dry_run"] and [o["run_id"] for o in out["orphans"]] == ["B"]
    assert out["removed"] == [] and any(k.startswith("runs/B/") for k in all_keys(reg_))
    applied = json.loads(cli("--older-than", "0s", "--apply").stdout)
    assert applied["removed"] == ["B"] and not any(k.startswith("runs/B/") for k in all_keys(reg_))
    bad = cli("--older-than", "yesterday")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "atft registry: gc --older-than: duration 'yesterday': expected a number with an "
        "optional unit s/m/h/d/w (e.g. 1d, 12h)"]


@pytest.mark.integration
def test_gc_aborts_unfinished_multipart_upload_of_a_killed_publish(s3_bucket, s3_endpoint,
                                                                   tmp_path):
    import boto3

    reg_ = Registry(f"s3://{s3_bucket}/m", endpoint_url=s3_endpoint)
    reg_.publish(make_run_dir(tmp_path / "src", "A"))
    raw = boto3.client("s3", endpoint_url=s3_endpoint)
    # a large-file publish killed between CreateMultipartUpload and CompleteMultipartUpload
    up = raw.create_multipart_upload(Bucket=s3_bucket, Key="m/runs/Big/model.safetensors")
    raw.upload_part(Bucket=s3_bucket, Key="m/runs/Big/model.safetensors", PartNumber=1,
                    UploadId=up["UploadId"], Body=b"x" * 1024)
    rep = reg_.gc(older_than_s=0)
    assert [(o.run_id, o.keys, o.leftovers) for o in rep.orphans] == \
        [("Big", (), ("runs/Big/model.safetensors",))]
    reg_.gc(older_than_s=0, apply=True)
    assert raw.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert reg_.gc(older_than_s=0).orphans == [] and reg_.read_manifest("A")
