"""ChooseStrategyOperator: branch a DAG to the strategy the advice recommends, or to the one a Param forces."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.branch import BaseBranchOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class ChooseStrategyOperator(BaseBranchOperator):
    """Follow AssessTransferOperator's advice: run the recommended strategy's tasks and skip the others.

    :param advice: the assess task's XCom (needs its ``strategy``). (templated)
    :param strategy: ``"auto"`` follows the advice; a strategy name overrides it, and the log says so. (templated)
    :param branches: the task or TaskGroup id to run for each strategy name; default the name itself.
    """

    template_fields: Sequence[str] = ("advice", "strategy")
    ui_color = "#fdf2d0"

    def __init__(
        self,
        *,
        advice: dict[str, Any] | str,
        strategy: str = "auto",
        branches: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.advice = advice
        self.strategy = strategy
        self.branches = branches

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """The advice it followed as the input (a branch writes nothing); None without the OpenLineage provider."""
        from airflow_tl.lineage import operator_lineage

        return operator_lineage([self.advice.get("advice_uri") if isinstance(self.advice, dict) else None], [])

    def choose_branch(self, context: Context) -> str:
        from airflow_tl.operators.arguments import coerce
        from airflow_tl.pipelines.strategies import STRATEGIES, get_strategy

        advice = coerce("advice", dict[str, Any], self.advice)
        branches = self.branches or {name: name for name in STRATEGIES}
        advised = advice.get("strategy")
        if self.strategy == "auto":
            chosen = get_strategy(str(advised))
            self.log.info("Following the advice: %s. %s", chosen.name, advice.get("reason", ""))
        else:
            chosen = get_strategy(self.strategy)
            self.log.info("The strategy Param overrides the advice (%s): running %s", advised, chosen.name)
        if chosen.name not in branches:
            from airflow_tl.exceptions import InvalidArgumentError

            raise InvalidArgumentError(
                f"Strategy {chosen.name!r} has no branch in this DAG; branches: {', '.join(sorted(branches))}."
            )
        return branches[chosen.name]
