"""``python -m airflow_tl``: the command line in ``airflow_tl.cli``."""

from airflow_tl.cli import main

raise SystemExit(main())
