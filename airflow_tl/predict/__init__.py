"""Scoring images with a registry's champion: listing, Parquet parts, the task (tl_predict, PredictOperator)."""
