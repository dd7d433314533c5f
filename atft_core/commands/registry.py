"""`atft registry publish|promote|rollback|show|list|verify|check|gc`: the model registry (SPEC 8).

Output is JSON on stdout; one ``atft registry: ...`` line on stderr for failures (and for where a
rollback went). Exit codes: 0 ok, 1 integrity/registry failure (also: the backend fails the
self-check, or is unreachable), 2 bad input (unsafe name, missing run, config error, bad
duration), 3 the alias moved concurrently (``--expect`` lost).
"""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("registry", help="publish, promote, roll back and inspect model runs")
    ops = p.add_subparsers(dest="registry_op", metavar="OP", required=True)

    def common(q):
        q.add_argument("--config", default="default", help="config name or YAML path")
        q.add_argument("--uri", default=None, help="registry URI (default: config registry.uri)")
        q.set_defaults(func=_run)
        return q

    q = common(ops.add_parser("publish", help="publish a run directory as an immutable version"))
    q.add_argument("run_dir")
    q.add_argument("--run-id", default=None, help="default: the directory name")
    q.add_argument("--data-fingerprint", default=None)

    q = common(ops.add_parser("promote", help="move an alias (CAS) to a published run"))
    q.add_argument("run_id")
    q.add_argument("--reason", required=True)
    q.add_argument("--actor", required=True)
    q.add_argument("--alias", default="champion")
    q.add_argument("--expect", default=None,
                   help="only if the alias points to this run now ('none' = unset)")
    q.add_argument("--gate-json", default=None, help="gate decision JSON file to record")

    q = common(ops.add_parser("rollback", help="move the alias back to previous (or --to)"))
    q.add_argument("--to", default=None)
    q.add_argument("--reason", required=True)
    q.add_argument("--actor", required=True)
    q.add_argument("--alias", default="champion")

    q = common(ops.add_parser("show", help="alias record and its manifest"))
    q.add_argument("--alias", default="champion")

    q = common(ops.add_parser("list", help="runs, their aliases, and the alias history"))
    q.add_argument("--alias", default="champion")

    q = common(ops.add_parser(
        "check", help="probe that the backend enforces create-only writes and compare-and-swap"))

    q = common(ops.add_parser(
        "gc", help="list (dry run) or remove orphan runs: files but no manifest"))
    q.add_argument("--older-than", default="1d",
                   help="only orphans with no write for this long (s/m/h/d/w; default 1d)")
    q.add_argument("--apply", action="store_true", help="remove them (default: list only)")

    q = common(ops.add_parser("verify", help="download and check every file of a run"))
    q.add_argument("target", help="run id, or an alias name such as 'champion'")
    q.add_argument("--alias-target", action="store_true",
                   help="treat TARGET as an alias even if a run has that name")


def _registry(args):
    from atft_core.config import load_config
    from atft_core.registry import Registry

    cfg = load_config(args.config)
    if args.uri:  # the config's other registry settings (deadline, unsafe opt-in) still apply
        return Registry.from_config(cfg.registry.model_copy(update={"uri": args.uri}))
    return Registry.from_config(cfg.registry)


def _run(args) -> int:
    from atft_core.registry import (
        ANY,
        AliasConflictError,
        InvalidNameError,
        NotFoundError,
        RegistryError,
    )

    try:
        out = _dispatch(args, ANY)
    except _UsageError as err:
        print(f"atft registry: {err}", file=sys.stderr)
        return 2
    except AliasConflictError as err:
        print(f"atft registry: {err}", file=sys.stderr)
        return 3
    except (InvalidNameError, NotFoundError) as err:
        print(f"atft registry: {err}", file=sys.stderr)
        return 2
    except RegistryError as err:
        print(f"atft registry: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # an S3 error the store does not map: still one line
        if not type(err).__module__.startswith(("botocore", "boto3", "s3transfer")):
            raise
        print(f"atft registry: S3 error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=1, sort_keys=True, default=str))
    return 0


def _dispatch(args, ANY) -> dict:
    reg = _registry(args)
    op = args.registry_op
    if op == "publish":
        res = reg.publish(args.run_dir, args.run_id, data_fingerprint=args.data_fingerprint)
        return {"run_id": res.manifest.run_id, "manifest_sha256": res.manifest_sha256,
                "uploaded": list(res.uploaded), "reused": list(res.reused),
                "already_published": res.already_published, "uri": reg.uri}
    if op == "promote":
        expect = ANY if args.expect is None else (None if args.expect == "none" else args.expect)
        gate = None
        if args.gate_json:
            with open(args.gate_json) as f:
                gate = json.load(f)
        return reg.promote(args.run_id, reason=args.reason, actor=args.actor, alias=args.alias,
                           expect=expect, gate=gate).to_dict()
    if op == "rollback":
        rec = reg.rollback(args.to, reason=args.reason, actor=args.actor, alias=args.alias)
        depth = len(rec.rollback_stack or ())
        msg = (f"rolled {rec.alias} back from {rec.previous} to {rec.run_id} "
               f"({depth} earlier run{'s' if depth != 1 else ''} left to roll back to)")
        print(f"atft registry: {msg}", file=sys.stderr)
        return {**rec.to_dict(), "message": msg}
    if op == "check":
        res = reg.check_backend()
        if not res.ok:
            from atft_core.registry import UnsafeBackendError

            raise UnsafeBackendError(res.line())
        return res.to_dict()
    if op == "gc":
        from atft_core.registry import parse_duration

        try:
            older = parse_duration(args.older_than)
        except ValueError as err:
            raise _UsageError(f"gc --older-than: {err}") from None
        return reg.gc(older, apply=args.apply).to_dict()
    if op == "show":
        return reg.show(args.alias)
    if op == "list":
        return {"uri": reg.uri,
                "runs": [{"run_id": r.run_id, "published": r.published,
                          "created_at": r.created_at, "aliases": list(r.aliases)}
                         for r in reg.list_runs()],
                "history": [h.to_dict() for h in reg.history(args.alias)]}
    if op == "verify":
        from atft_core.registry.names import check_alias

        rec = None
        if args.alias_target or not _is_published(reg, args.target):
            check_alias(args.target)
            rec = reg.get_alias(args.target)
        if rec is not None:
            m = reg.verify_run(rec.run_id, rec.manifest_sha256)
        elif args.alias_target or not _is_published(reg, args.target):
            from atft_core.registry import NotFoundError

            raise NotFoundError(f"{args.target!r} is neither a published run nor a set alias "
                                f"in {reg.uri}")
        else:
            m = reg.verify_run(args.target)
        return {"run_id": m.run_id, "verified_files": [f.name for f in m.files], "ok": True}
    raise AssertionError(op)


class _UsageError(ValueError):
    """Bad command-line input (exit 2)."""


def _is_published(reg, name: str) -> bool:
    from atft_core.registry import NotFoundError

    try:
        reg.read_manifest(name)
        return True
    except NotFoundError:
        return False
