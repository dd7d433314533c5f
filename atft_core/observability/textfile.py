"""node-exporter textfile-collector output: one ``.prom`` file per push group, merged like pushadd.

Families of a push replace the same names in the file, others stay; written atomically (temp,
fsync, rename) under an ``flock`` and kept 0644 (node-exporter usually runs as another user).
"""

from __future__ import annotations

import fcntl
import logging
import re
from collections.abc import Mapping
from pathlib import Path

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from atft_core.atomic import atomic_write_text
from atft_core.observability.metric_table import render

log = logging.getLogger("atft_core.observability")

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _safe(part: str) -> str:
    return _SAFE.sub("_", part) or "_"


def _family_key(fam: Metric) -> str:
    # the parser names a counter family without "_total"; the builder strips it too
    return fam.name


def write_textfile(path: Path, families: list[Metric]) -> None:
    """Merge ``families`` into the textfile at ``path`` with pushadd semantics, atomically.

    Families in ``families`` replace families of the same name in the file; the rest stay.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        new = {_family_key(f): f for f in families}
        kept: list[Metric] = []
        if path.exists():
            try:
                kept = [f for f in text_string_to_metric_families(path.read_text())
                        if _family_key(f) not in new]
            except (ValueError, OSError) as err:  # a corrupt file is replaced, not merged
                log.warning("metrics textfile %s unreadable (%s); rewriting it", path, err)
        text = render(sorted([*kept, *new.values()], key=_family_key))
        atomic_write_text(path, text, mode=0o644)  # node-exporter usually runs as another user


def read_textfile_value(path: Path, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """The value of sample ``name`` (matching ``labels``) in a textfile, or None."""
    if not path.exists():
        return None
    for fam in text_string_to_metric_families(path.read_text()):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                return float(s.value)
    return None
