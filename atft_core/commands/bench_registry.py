"""`atft bench registry`: publish + verified load of a ~25 MB model over a local S3 server.

1. A run directory with a ``--mb`` MB safetensors model (float32), config.yaml, metrics.json and
   report.md is written to a temp dir.
2. A local S3 server (moto, subprocess, HTTP on 127.0.0.1; atft_core.registry.locals3) is
   started unless ``--uri s3://...`` points elsewhere (then AWS_ENDPOINT_URL etc. apply).
3. For each backend (s3, file): ``--repeats`` times publish under a fresh run id, then
   ``load_run`` with sha256 verification and without it (copy only), then time
   ``state_dict()`` (safetensors parse) separately. Medians are printed as JSON, with the
   verification overhead ratio verified/unverified load and the raw local sha256 rate.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def register(sub) -> None:
    from atft_core.cli import bench_subparsers
    p = bench_subparsers(sub).add_parser(
        "registry", help="registry publish + verified load time over a local S3 server")
    p.add_argument("--mb", type=float, default=25.0, help="model size in MB")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--uri", default=None,
                   help="s3://bucket/prefix to bench instead of the local moto server")
    p.add_argument("--serialize", action="store_true",
                   help="local server handles one request at a time (as in the CAS tests)")
    p.add_argument("--skip-file", action="store_true", help="do not bench the file:// backend")
    p.set_defaults(func=_run)


def _make_run_dir(base: Path, mb: float) -> Path:
    import torch
    from safetensors.torch import save_file

    from atft_core.config import Config

    d = base / "bench-run"
    d.mkdir()
    n = int(mb * 1024 * 1024 / 4)
    g = torch.Generator().manual_seed(0)
    # a few tensors like a real model rather than one blob
    sizes = [n // 2, n // 4, n - n // 2 - n // 4]
    sha = Config().sha256()  # publish checks config.yaml <-> metrics.json <-> weights agree
    save_file({f"layer{i}.weight": torch.randn(s, generator=g) for i, s in enumerate(sizes)},
              str(d / "model.safetensors"), metadata={"config_sha256": json.dumps(sha)})
    (d / "config.yaml").write_text(Config().to_yaml())
    (d / "metrics.json").write_text(json.dumps({"rank_ic_1d": 0.05, "data_fingerprint": "bench",
                                                "config_sha256": sha}))
    (d / "report.md").write_text("# bench\n")
    return d


def _bench_backend(reg, run_dir: Path, repeats: int, tag: str) -> dict:
    size_mb = sum(p.stat().st_size for p in run_dir.iterdir() if p.is_file()) / 2**20
    pub, ver, raw, parse = [], [], [], []
    for i in range(repeats):
        rid = f"{tag}-{i}-{os.getpid()}-{time.time_ns()}"
        t0 = time.perf_counter()
        reg.publish(run_dir, rid)
        pub.append(time.perf_counter() - t0)
        for verify, acc in ((True, ver), (False, raw)):
            t0 = time.perf_counter()
            loaded = reg.load_run(rid, verify=verify)
            acc.append(time.perf_counter() - t0)
            if verify:
                t0 = time.perf_counter()
                loaded.state_dict()
                parse.append(time.perf_counter() - t0)
            shutil.rmtree(loaded.path, ignore_errors=True)
    med = statistics.median
    return {"uri": reg.uri, "run_mb": round(size_mb, 2), "repeats": repeats,
            "publish_s": round(med(pub), 4), "verified_load_s": round(med(ver), 4),
            "unverified_copy_s": round(med(raw), 4),
            "safetensors_state_dict_s": round(med(parse), 4),
            "verify_overhead_ratio": round(med(ver) / med(raw), 3),
            "publish_mb_per_s": round(size_mb / med(pub), 1),
            "verified_load_mb_per_s": round(size_mb / med(ver), 1)}


def _sha256_rate(path: Path) -> float:
    from atft_core.registry.store import sha256_file

    t0 = time.perf_counter()
    sha256_file(path)
    return path.stat().st_size / 2**20 / (time.perf_counter() - t0)


def _run(args) -> int:
    import contextlib

    from atft_core.registry import Registry

    out: dict = {"model_mb": args.mb}
    with tempfile.TemporaryDirectory(prefix="atft-bench-registry-") as tmp:
        tmp_path = Path(tmp)
        run_dir = _make_run_dir(tmp_path, args.mb)
        out["sha256_mb_per_s"] = round(_sha256_rate(run_dir / "model.safetensors"), 1)
        with contextlib.ExitStack() as stack:
            if args.uri:
                reg = Registry(args.uri, cache_dir=tmp_path / "cache")
            else:
                import boto3

                from atft_core.registry.locals3 import local_s3_server

                endpoint = stack.enter_context(local_s3_server(serialize=args.serialize))
                for k, v in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"),
                             ("AWS_DEFAULT_REGION", "us-east-1")):
                    os.environ.setdefault(k, v)
                boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="atft-bench")
                reg = Registry("s3://atft-bench/registry", endpoint_url=endpoint,
                               cache_dir=tmp_path / "cache")
                out["s3_server"] = {"endpoint": endpoint, "kind": "moto (local, HTTP)",
                                    "serialized": args.serialize}
            out["s3"] = _bench_backend(reg, run_dir, args.repeats, "s3")
        if not args.skip_file:
            freg = Registry(f"file://{tmp_path / 'file-registry'}", cache_dir=tmp_path / "cache")
            out["file"] = _bench_backend(freg, run_dir, args.repeats, "file")
    print(json.dumps(out, indent=1))
    return 0
