"""Evaluation without Airflow: metrics of a classifier on a test split, the promotion gate, and the HTML report."""
