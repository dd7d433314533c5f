"""`atft metrics list|where`: the metric table (atft_core.observability) and where pushes go."""

from __future__ import annotations


def register(sub) -> None:
    from atft_core.cli import add_config_args

    p = sub.add_parser("metrics", help="list the Prometheus metrics / show where they are pushed")
    msub = p.add_subparsers(dest="metrics_cmd", metavar="ACTION", required=True)
    msub.add_parser("list", help="every metric: name, type, labels, help").set_defaults(func=_list)
    w = msub.add_parser("where", help="the resolved Pushgateway (or textfile dir) for a config")
    add_config_args(w)
    w.set_defaults(func=_where)


def _list(args) -> int:
    from atft_core.observability import METRICS

    for spec in METRICS.values():
        labels = "{" + ",".join(spec.labels) + "}" if spec.labels else ""
        print(f"{spec.name}{labels}\t{spec.kind}\t{spec.help}")
    return 0


def _where(args) -> int:
    from atft_core.config import load_config
    from atft_core.observability import resolve_gateway

    cfg = load_config(args.config, args.overrides)
    try:
        gw = resolve_gateway(cfg.metrics)
    except ValueError as err:
        print(f"invalid Pushgateway setting ({err}); textfile {cfg.metrics.textfile_dir}")
        return 1
    if gw is None:
        print(f"textfile {cfg.metrics.textfile_dir}")
    else:
        print(f"pushgateway {gw.url} (from {gw.source})")
    return 0
