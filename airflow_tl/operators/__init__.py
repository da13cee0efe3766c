"""The airflow-tl operators. Importing this package stays light: torch loads only inside ``execute``."""

from airflow_tl.operators.assess import AssessTransferOperator
from airflow_tl.operators.choose import ChooseStrategyOperator
from airflow_tl.operators.evaluate import EvaluateOperator
from airflow_tl.operators.extract import ExtractFeaturesOperator
from airflow_tl.operators.fetch import FetchPretrainedOperator
from airflow_tl.operators.predict import PredictOperator
from airflow_tl.operators.shards import PrepareShardsOperator
from airflow_tl.operators.train import FreezeAndTrainOperator
from airflow_tl.operators.wait import WaitForImagesOperator

__all__ = [
    "AssessTransferOperator",
    "ChooseStrategyOperator",
    "EvaluateOperator",
    "ExtractFeaturesOperator",
    "FetchPretrainedOperator",
    "FreezeAndTrainOperator",
    "PredictOperator",
    "PrepareShardsOperator",
    "WaitForImagesOperator",
]
