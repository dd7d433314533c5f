"""Validation results: per-check outcome and the whole report (readable text and JSON)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

import polars as pl

Severity = Literal["fatal", "warning"]
# pass: no offending row; warn: offending rows within tolerance, or a failed warning-level check;
# fail: a failed fatal check; skipped: needs a column that is missing / of the wrong dtype;
# error: GX raised while evaluating (treated like fail when fatal)
Status = Literal["pass", "warn", "fail", "skipped", "error"]


@dataclass(frozen=True)
class CheckResult:
    """One GX expectation's outcome.

    Args:
        name: the check's name (suite meta.check), e.g. ``daily_return_bounded``.
        expectation: the GX expectation type.
        severity: fatal (a failure stops the pipeline) or warning.
        status: see :data:`Status`.
        success: GX's verdict (with ``mostly`` a check can succeed and still flag rows).
        unexpected_count: offending rows (None for table-level checks).
        examples: up to 5 offending rows (Date, Code and the checked column) or the observed value.
        detail: one line of polars-side context (dates, fractions, dtypes).
    """

    name: str
    expectation: str
    severity: Severity
    status: Status
    success: bool
    what: str
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    observed: Any = None
    examples: tuple[dict[str, Any], ...] = ()
    detail: str = ""

    @property
    def blocking(self) -> bool:
        return self.severity == "fatal" and self.status in ("fail", "error")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "expectation": self.expectation, "severity": self.severity,
            "status": self.status, "success": self.success, "what": self.what,
            "unexpected_count": self.unexpected_count, "unexpected_percent": self.unexpected_percent,
            "observed": self.observed, "examples": list(self.examples), "detail": self.detail,
        }


def _fmt_example(ex: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in ex.items())


@dataclass(frozen=True)
class ValidationReport:
    """Outcome of :func:`atft_core.validation.validate_quotes`.

    Shapes: ``bad_ticks`` (B rows: Date, Code, return) -- the rows whose |daily return| exceeds
    ``max_abs_daily_return``; downstream masks their targets/features.
    """

    source: str
    success: bool
    checks: tuple[CheckResult, ...]
    bad_ticks: pl.DataFrame
    rows: int
    codes: int
    first_date: dt.date | None
    last_date: dt.date | None
    as_of: dt.date | None
    latest_expected_day: dt.date | None
    data_docs: str | None
    seconds: float
    notes: tuple[str, ...] = field(default=())

    def check(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r}")

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if c.blocking)

    @property
    def warnings(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if c.status == "warn" or (c.status in ("fail", "error") and not c.blocking))

    def to_text(self) -> str:
        head = "PASSED" if self.success else "FAILED"
        span = f"{self.first_date}..{self.last_date}" if self.first_date else "no dates"
        fresh = (f", latest expected trading day {self.latest_expected_day} (as of {self.as_of})"
                 if self.latest_expected_day else ", freshness not checked (no as_of)")
        lines = [f"quotes validation {head}: {self.source}",
                 f"  {self.rows:,} rows, {self.codes:,} codes, {span}{fresh}"]
        for c in self.failed:
            lines.append(self._line("FATAL", c))
        for c in self.warnings:
            lines.append(self._line("WARN ", c))
        skipped = [c.name for c in self.checks if c.status == "skipped"]
        if skipped:
            lines.append(f"  skipped (column missing or of the wrong dtype): {', '.join(skipped)}")
        n_pass = sum(c.status == "pass" for c in self.checks)
        lines.append(f"  {n_pass} of {len(self.checks)} checks passed; {len(self.bad_ticks)} bad ticks flagged")
        lines.extend(f"  note: {n}" for n in self.notes)
        if self.data_docs:
            lines.append(f"  Data Docs: {self.data_docs}")
        lines.append(f"  ({self.seconds:.1f} s)")
        return "\n".join(lines)

    @staticmethod
    def _line(tag: str, c: CheckResult) -> str:
        count = "" if c.unexpected_count is None else f" {c.unexpected_count:,} rows"
        if c.unexpected_percent is not None and c.unexpected_count:
            count += f" ({c.unexpected_percent:.4g}%)"
        out = [f"  {tag} {c.name}:{count} -- expected: {c.what}"]
        if c.detail:
            out.append(f"        {c.detail}")
        for ex in c.examples[:3]:
            out.append(f"        e.g. {_fmt_example(ex)}")
        return "\n".join(out)

    def to_dict(self, max_bad_ticks: int = 1000) -> dict[str, Any]:
        iso = lambda d: d.isoformat() if d else None  # noqa: E731
        ticks = self.bad_ticks.head(max_bad_ticks).with_columns(pl.col("Date").cast(pl.String))
        return {
            "source": self.source, "success": self.success, "rows": self.rows, "codes": self.codes,
            "first_date": iso(self.first_date), "last_date": iso(self.last_date),
            "as_of": iso(self.as_of), "latest_expected_day": iso(self.latest_expected_day),
            "data_docs": self.data_docs, "seconds": round(self.seconds, 3),
            "checks": [c.to_dict() for c in self.checks],
            "bad_ticks_count": len(self.bad_ticks), "bad_ticks": ticks.to_dicts(),
            "notes": list(self.notes),
        }
