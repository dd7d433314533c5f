"""atft_core: the library behind the atft-airflow DAGs (no Airflow imports in here)."""

__version__ = "0.1.0"
