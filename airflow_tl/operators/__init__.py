"""The airflow-tl operators. Importing this package stays light: torch loads only inside ``execute``."""

from airflow_tl.operators.fetch import FetchPretrainedOperator

__all__ = ["FetchPretrainedOperator"]
