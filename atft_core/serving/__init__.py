"""Serving the champion (issue 11): daily signals (:mod:`.predict`, :mod:`.signals`), live
metrics once labels are known (:mod:`.monitor`) and drift against the training window
(:mod:`.drift`). Nothing here imports Airflow; torch/polars are imported where used."""
