"""The ops dashboard: an Airflow plugin that serves the registries' models, versions and history."""
