"""Airflow Assets shared by the atft DAGs (one definition, imported by producer and consumer).

``QUOTES_STORE``: the day-partitioned quotes store (``data.source``). ``atft_ingest`` emits an
event on it after committing a trading day (``extra = {"day": "YYYY-MM-DD", ...}``);
``atft_retrain`` is scheduled on it (or its timetable). The URI names the logical store, not a
path: where it lives is deployment (``data.source`` / ``ATFT_QUOTES_STORE``).
"""

from __future__ import annotations

from airflow.sdk import Asset

QUOTES_STORE = Asset(name="atft_quotes_store", uri="atft://quotes-store")
