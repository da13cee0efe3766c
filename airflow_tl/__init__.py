"""airflow-tl: an Apache Airflow provider for transfer learning.

Kept import-light on purpose: Airflow imports providers while parsing DAG files.
"""

__version__ = "0.1.0"
