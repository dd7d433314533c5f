"""Run the quotes suite with Great Expectations 1.x and turn the result into a ValidationReport.

One GX run per call: an ephemeral context, a pandas datasource with one whole-dataframe batch of
the derived frame (atft_core.validation.derive), the suite from include/gx/, one
ValidationDefinition and a Checkpoint whose UpdateDataDocsAction writes the Data Docs site.

Decisions (SPEC 3.1 "validation decides what is fatal and what is masked"):
* Schema: a missing required column or a non-numeric price/volume, non-date Date or non-string
  Code is fatal; an integer/float32 price or volume column is a warning (cast to Float64).
* Bad ticks (|daily return| > max_abs_daily_return, e.g. an isolated 100x price error): flagged in
  ``report.bad_ticks`` for the downstream mask; fatal only when more than max_bad_tick_fraction of
  the returns are bad (then the file itself is suspect: a unit/adjustment change).
* Open/Close outside [Low, High] beyond ohlc_tolerance: same rule with max_ohlc_violation_fraction.
  High < Low is always fatal.
* Coverage below min_daily_coverage: a warning on historical days (listings/suspensions, a thin
  day long ago does not invalidate the history), fatal on the last day (a partially landed file).
* Non-trading (holiday/weekend) dates: fatal. The canonical table holds XTKS sessions only;
  ``atft ingest`` is where a source's holiday rows are dropped, so a holiday row reaching
  validation means an ingest bug or a wrong calendar -- stop and say which dates.
* Missing sessions inside the span (whole days without rows): a warning.
* Freshness (when as_of is given and cfg.require_fresh): the latest expected XTKS session
  (calendar.latest_expected_trading_day(as_of)) must be present; rows after it are fatal.
  ``as_of=None`` skips both (the CLI defaults to today in Asia/Tokyo).
* Data Docs folder: the site is built in a fresh temp dir and swapped in, so the folder is
  replaced as a whole -- only when the tool owns it: it does not exist, is empty, or holds a
  site this tool wrote (marker file ``.atft-data-docs``, or only the entries a GX site has). A
  non-empty folder of anything else (``--docs .``, a home dir) is refused before any work,
  nothing moved or deleted.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl

from atft_core.validation.derive import DERIVED_NEEDS, Derived, derive
from atft_core.validation.report import CheckResult, ValidationReport
from atft_core.validation.source import DataValidationError, read_quotes
from atft_core.validation.suite import (
    SUITE_NAME,
    columns_of,
    resolved_expectations,
    suite_parameters,
)

N_EXAMPLES = 5
DOCS_SITE = "atft_local"
DOCS_MARKER = ".atft-data-docs"  # written into every site this tool builds
GX_SITE_ENTRIES = frozenset({"index.html", "static", "validations", "expectations", DOCS_MARKER})


class DocsDirError(ValueError):
    """The Data Docs folder holds files this tool did not write; it is left untouched."""


def check_docs_dir(docs_dir: Path) -> None:
    """Raise :class:`DocsDirError` unless ``docs_dir`` may be replaced by a new site."""
    if not docs_dir.exists():
        return
    if not docs_dir.is_dir() or docs_dir.is_symlink():
        raise DocsDirError(f"Data Docs folder {docs_dir} is not a directory; pick another --docs")
    names = {p.name for p in docs_dir.iterdir()}
    if not names or DOCS_MARKER in names:
        return
    if "index.html" in names and names <= GX_SITE_ENTRIES:  # a site from before the marker
        return
    shown = ", ".join(sorted(names - GX_SITE_ENTRIES)[:5]) or ", ".join(sorted(names)[:5])
    raise DocsDirError(f"Data Docs folder {docs_dir} is not empty and was not written by atft "
                       f"(has {shown}); pass an empty or new folder with --docs (nothing was changed)")


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, bool | str | int):
        return v
    if isinstance(v, float):
        return None if math.isnan(v) else v
    if hasattr(v, "isoformat"):  # pandas Timestamp / datetime / date
        ts = v.isoformat()
        return ts[:10] if ts.endswith("T00:00:00") or len(ts) == 10 else ts
    if hasattr(v, "item"):  # numpy scalar
        return _jsonable(v.item())
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)


def _run_gx(frame: pl.DataFrame, expectations: list[dict], index_cols: list[str],
            docs_dir: Path | None) -> tuple[list, str | None]:
    """Validate ``frame`` against ``expectations`` in one checkpoint run; return GX results."""
    import great_expectations as gx  # lazy: ~4 s import
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    tmp_docs = None
    if docs_dir is not None:
        docs_dir.parent.mkdir(parents=True, exist_ok=True)
        # build into a sibling temp dir and swap it in: never a half-written site
        tmp_docs = Path(tempfile.mkdtemp(prefix=f".{docs_dir.name}.", dir=docs_dir.parent))
        ctx.add_data_docs_site(site_name=DOCS_SITE, site_config={
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(tmp_docs)},
        })
    try:
        asset = ctx.data_sources.add_pandas("quotes").add_dataframe_asset("raw_quotes")
        batch_def = asset.add_batch_definition_whole_dataframe("whole_file")
        suite = ctx.suites.add(gx.ExpectationSuite(
            name=SUITE_NAME,
            expectations=[ExpectationConfiguration(**e).to_domain_obj() for e in expectations],
        ))
        vdef = ctx.validation_definitions.add(
            gx.ValidationDefinition(name="raw_quotes", data=batch_def, suite=suite))
        result_format: dict[str, Any] = {"result_format": "SUMMARY",
                                         "partial_unexpected_count": N_EXAMPLES}
        if index_cols:
            result_format["unexpected_index_column_names"] = index_cols
        # name the site: the ephemeral context also has a default temp-dir site we must not build
        actions = ([gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])]
                   if tmp_docs else [])
        checkpoint = ctx.checkpoints.add(gx.Checkpoint(
            name="atft_quotes", validation_definitions=[vdef], actions=actions,
            result_format=result_format))
        pdf = frame.to_pandas()
        result = checkpoint.run(batch_parameters={"dataframe": pdf})
        (vres,) = result.run_results.values()
        docs_index = None
        if tmp_docs is not None:
            if not (tmp_docs / "index.html").exists():
                raise RuntimeError(f"GX wrote no Data Docs index.html in {tmp_docs}")
            (tmp_docs / DOCS_MARKER).write_text("Data Docs written by `atft validate`\n")
            os.chmod(tmp_docs, 0o755)  # mkdtemp makes it 0700; the site is meant to be served
            check_docs_dir(docs_dir)  # again: it may have changed while GX ran
            old = None
            if docs_dir.exists():
                # rename over a fresh empty dir of our own (no fixed name that could be someone's)
                old = Path(tempfile.mkdtemp(prefix=f".{docs_dir.name}.old.", dir=docs_dir.parent))
                os.replace(docs_dir, old)
            os.replace(tmp_docs, docs_dir)
            tmp_docs = None
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)  # our previous site, checked above
            docs_index = str(docs_dir / "index.html")
        return list(vres.results), docs_index
    finally:
        if tmp_docs is not None:
            shutil.rmtree(tmp_docs, ignore_errors=True)


def _depends_on_invalid(kwargs: dict, invalid: frozenset[str]) -> bool:
    for col in columns_of(kwargs):
        if col in invalid or any(n in invalid for n in DERIVED_NEEDS.get(col, ())):
            return True
    return False


def _detail(name: str, d: Derived, cfg, as_of: dt.date | None, r) -> str:
    """Polars-side context for a non-passing check (dates, fractions, dtypes)."""
    if name.startswith(("dtype_", "float64_", "column_")):
        col = name.split("_", 1)[1]
        return d.dtype_notes.get(col, "")
    if name == "row_count":
        return f"{d.rows} rows (need >= {cfg.min_rows}); the file is empty" if d.rows == 0 else f"{d.rows} rows"
    if name == "trading_day":
        bad = d.days.filter(~pl.col("is_trading_day"))
        shown = ", ".join(f"{r_['Date']} ({r_['n_codes']} rows)" for r_ in bad.head(8).to_dicts())
        return (f"{bad.height} non-trading date(s) (XTKS holidays/weekends): {shown}; the canonical "
                "table holds XTKS sessions only -- drop these rows at ingest or fix the calendar")
    if name == "daily_coverage":
        low = d.days.filter(pl.col("coverage") < cfg.min_daily_coverage)
        shown = ", ".join(f"{x['Date']} ({x['n_codes']} codes, {x['coverage']:.2f})" for x in low.head(5).to_dicts())
        return f"{low.height} day(s) below {cfg.min_daily_coverage:.0%} of the median {d.median_codes:g} codes: {shown}"
    if name == "latest_day_coverage" and d.days.height:
        last = d.days.tail(1).to_dicts()[0]
        return (f"last day {last['Date']} has {last['n_codes']} codes vs median {d.median_codes:g} "
                f"(coverage {last['coverage']:.2f} < {cfg.min_daily_coverage})")
    if name == "no_missing_sessions":
        shown = ", ".join(str(x) for x in d.missing_sessions[:8])
        return f"{len(d.missing_sessions)} XTKS session(s) without any rows: {shown}"
    if name == "fresh":
        return (f"latest date in the file is {d.last_date}, but {d.latest_expected_day} is expected "
                f"as of {as_of} (stale: {r.result.get('observed_value')} session(s) behind)")
    if name == "not_in_future":
        return f"rows dated after the latest expected trading day {d.latest_expected_day} (as of {as_of})"
    if name == "daily_return_bounded":
        n_ret = d.frame["ret"].is_not_null().sum() if "ret" in d.frame.columns else 0
        frac = len(d.bad_ticks) / n_ret if n_ret else 0.0
        verdict = "fatal" if frac > cfg.max_bad_tick_fraction else "flagged for masking, not fatal"
        return (f"{len(d.bad_ticks)} bad tick(s) with |return| > {cfg.max_abs_daily_return:g}: "
                f"{frac:.4%} of {n_ret:,} returns (limit {cfg.max_bad_tick_fraction:.4%}) -> {verdict}")
    if name == "open_close_in_range":
        n = r.result.get("unexpected_count") or 0
        verdict = "fatal" if not r.success else "reported, not fatal"
        return (f"{n} row(s) with Open/Close outside [Low, High] by more than {cfg.ohlc_tolerance:g} "
                f"(limit {cfg.max_ohlc_violation_fraction:.4%} of rows) -> {verdict}")
    if name == "unique_keys":
        return f"{r.result.get('unexpected_count')} rows share a (Date, Code) with another row"
    return ""


def _exception_message(info: dict | None) -> str | None:
    """GX puts either {raised_exception, exception_message} or {metric_id: {...}} here."""
    if not info:
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message") or "exception")
    for v in info.values():
        if isinstance(v, dict) and v.get("raised_exception"):
            return str(v.get("exception_message") or "exception")
    return None


def _check_result(r, d: Derived, cfg, as_of) -> CheckResult:
    conf = r.expectation_config
    meta = conf.meta or {}
    name, severity = meta.get("check", conf.type), meta.get("severity", "fatal")
    res = r.result or {}
    error = _exception_message(r.exception_info)
    raised = error is not None
    count = res.get("unexpected_count")
    if raised:
        status = "skipped" if _depends_on_invalid(conf.kwargs, d.invalid_columns) else "error"
    elif not r.success:
        status = "fail" if severity == "fatal" else "warn"
    else:
        status = "warn" if count else "pass"
    examples = tuple(_jsonable(x) for x in res.get("partial_unexpected_index_list") or [])
    if not examples and res.get("partial_unexpected_list"):
        examples = tuple({"value": _jsonable(v)} for v in res["partial_unexpected_list"])
    detail = ""
    if status in ("fail", "warn"):
        detail = _detail(name, d, cfg, as_of, r)
    elif status == "error":
        detail = (error or "")[:300]
    pct = res.get("unexpected_percent")
    return CheckResult(
        name=name, expectation=conf.type, severity=severity, status=status,
        success=bool(r.success), what=meta.get("what", ""), unexpected_count=count,
        unexpected_percent=None if pct is None else float(pct),
        observed=_jsonable(res.get("observed_value")), examples=examples[:N_EXAMPLES],
        detail=detail,
    )


def _window(df: pl.DataFrame, label: str, start, end) -> tuple[pl.DataFrame, str]:
    """Keep start <= Date <= end (inclusive, ISO strings or dates) when Date is a date column."""
    if start is None and end is None:
        return df, label
    if df.schema.get("Date") != pl.Date:
        return df, label  # the dtype check fails and names the problem
    lo = dt.date.fromisoformat(str(start)) if start is not None else None
    hi = dt.date.fromisoformat(str(end)) if end is not None else None
    if lo is not None:
        df = df.filter(pl.col("Date") >= lo)
    if hi is not None:
        df = df.filter(pl.col("Date") <= hi)
    return df, f"{label} [{lo or ''}..{hi or ''}]"


def validate_quotes(
    source: str | Path | pl.DataFrame,
    cfg=None,
    as_of: dt.date | None = None,
    docs_dir: Path | str | None = None,
    start: dt.date | str | None = None,
    end: dt.date | str | None = None,
) -> ValidationReport:
    """Validate raw daily quotes (SPEC 3.1) with the GX suite in include/gx/.

    Args:
        source: a canonical-quotes DataFrame, parquet file, hive-partitioned parquet store
            directory, or CSV with the canonical columns.
        cfg: ValidationConfig (default: the typed defaults).
        as_of: the run date; enables the freshness checks (None: not checked).
        docs_dir: where the Data Docs site goes (``index.html``); None: no Data Docs.
        start, end: optional inclusive Date window validated (the training window of a run;
            pass ``end`` for a backfill whose store already holds later days, otherwise those
            rows fail ``not_in_future``).

    Returns:
        ValidationReport (``success`` False when any fatal check failed).

    Raises:
        UnreadableInputError: the source is missing, empty (0 bytes), truncated or corrupt.
    """
    from atft_core.config import ValidationConfig

    cfg = cfg or ValidationConfig()
    t0 = time.perf_counter()
    if docs_dir is not None:
        check_docs_dir(Path(docs_dir).resolve())  # before any work
    df, label = read_quotes(source)
    df, label = _window(df, label, start, end)
    d = derive(df, cfg, as_of)
    exps = resolved_expectations(suite_parameters(cfg, d), has_as_of=as_of is not None,
                                 require_fresh=cfg.require_fresh, columns=d.frame.columns)
    index_cols = [c for c in ("Date", "Code") if c in d.frame.columns and c not in d.invalid_columns]
    results, docs_index = _run_gx(d.frame, exps, index_cols,
                                  Path(docs_dir).resolve() if docs_dir is not None else None)  # GX needs absolute
    order = {e["meta"].get("check"): i for i, e in enumerate(exps)}  # GX regroups by domain
    checks = tuple(sorted((_check_result(r, d, cfg, as_of) for r in results),
                          key=lambda c: order.get(c.name, len(order))))
    notes = tuple(f"{n}; cast to Float64" for c, n in d.dtype_notes.items()
                  if c not in d.invalid_columns and c in df.columns)
    return ValidationReport(
        source=label, success=not any(c.blocking for c in checks), checks=checks,
        bad_ticks=d.bad_ticks, rows=d.rows, codes=d.codes, first_date=d.first_date,
        last_date=d.last_date, as_of=as_of, latest_expected_day=d.latest_expected_day,
        data_docs=docs_index, seconds=time.perf_counter() - t0, notes=notes,
    )


def ensure_valid(
    source: str | Path | pl.DataFrame,
    cfg=None,
    as_of: dt.date | None = None,
    docs_dir: Path | str | None = None,
    start: dt.date | str | None = None,
    end: dt.date | str | None = None,
) -> ValidationReport:
    """:func:`validate_quotes`, raising :class:`DataValidationError` (message = the readable
    report) when a fatal check fails, so nothing downstream runs. Returns the report on success
    (warnings and ``bad_ticks`` included)."""
    report = validate_quotes(source, cfg, as_of, docs_dir, start=start, end=end)
    if not report.success:
        raise DataValidationError(report)
    return report
