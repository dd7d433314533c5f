"""`atft predict`: score one trading day's cross-section with a verified registry run.

    atft predict --data QUOTES --date D [--alias champion|shadow] [--uri REGISTRY] [--config NAME]
                 [--out FILE.parquet] [--publish]

Resolves the alias (default ``champion``) through the registry's verified load, scores day D
(every horizon) and prints a JSON line (run id, rows, sha256, where it went). ``--out`` writes the
signal parquet locally (create-only: an existing file is never overwritten); ``--publish`` writes
it to ``{registry}/signals/{D}/[shadow/]{run_id}.parquet`` like the ``atft_score`` DAG (idempotent;
other bytes for the same run id are refused). Exit codes: 0 ok, 1 verification / registry
failure (nothing published), 2 bad input (no such day, unset alias, existing --out).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("predict", help="score a day's cross-section with the champion (signal file)")
    p.add_argument("--data", required=True, help="quotes: data store dir or parquet file")
    p.add_argument("--date", required=True, help="trading day D (YYYY-MM-DD) to score")
    p.add_argument("--alias", default="champion", choices=("champion", "shadow"))
    p.add_argument("--config", default="default", help="config name or YAML path (registry settings)")
    p.add_argument("--uri", default=None, help="registry URI (default: config registry.uri)")
    p.add_argument("--out", default=None, help="write the signal parquet here (must not exist)")
    p.add_argument("--publish", action="store_true", help="publish to {registry}/signals/{D}/")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def registry_from_args(args):
    from atft_core.config import load_config
    from atft_core.registry import Registry

    cfg = load_config(args.config)
    reg = cfg.registry
    uri = args.uri or os.environ.get("ATFT_REGISTRY")
    if uri:
        reg = reg.model_copy(update={"uri": uri})
    return Registry.from_config(reg)


def _fail(cmd: str, msg: str, code: int) -> int:
    print(f"atft {cmd}: {msg}", file=sys.stderr)
    return code


def run(args) -> int:
    from atft_core.registry import IntegrityError, NotFoundError, RegistryError
    from atft_core.serving.predict import predict_day
    from atft_core.serving.signals import SignalConflictError, publish_signal

    out = Path(args.out) if args.out else None
    if out is not None and out.exists():
        return _fail("predict", f"{out} exists; the signal file is never overwritten", 2)
    if not Path(args.data).exists():
        return _fail("predict", f"--data {args.data} does not exist", 2)
    try:
        registry = registry_from_args(args)
        signal = predict_day(registry, args.date, args.data, alias=args.alias, device=args.device)
        data = signal.to_parquet_bytes()
        result = {"date": str(signal.day), "role": args.alias, "run_id": signal.run_id,
                  "rows": signal.frame.height, "sha256": hashlib.sha256(data).hexdigest(),
                  "data_fingerprint": signal.data_fingerprint}
        if out is not None:
            from atft_core.atomic import atomic_write_bytes

            out.parent.mkdir(parents=True, exist_ok=True)
            if out.exists():  # appeared meanwhile: still never overwritten
                return _fail("predict", f"{out} exists; the signal file is never overwritten", 2)
            atomic_write_bytes(out, data)
            result["out"] = str(out)
        if args.publish:
            rec = publish_signal(registry, signal, role=args.alias)
            result |= {"uri": rec.uri, "already_published": rec.already_published}
    except IntegrityError as err:
        return _fail("predict", f"verification failed, nothing scored or published: {err}", 1)
    except SignalConflictError as err:
        return _fail("predict", str(err), 1)
    except NotFoundError as err:
        return _fail("predict", str(err), 2)
    except RegistryError as err:
        return _fail("predict", str(err), 1)
    except ValueError as err:
        return _fail("predict", str(err), 2)
    print(json.dumps(result))
    return 0
