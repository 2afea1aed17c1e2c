"""orchestrator: an event-driven workflow orchestrator (Airflow's scheduler, executors and API in one daemon).

This top-level package is what DAG files import (`from orchestrator import DAG, Bash, task`),
so it only re-exports the authoring API and stays cheap to import: the daemon's heavy
dependencies load only in the daemon's own modules.
"""

from orchestrator.authoring import (
    DAG,
    Asset,
    AssetAll,
    AssetAny,
    BaseOperator,
    Bash,
    BashOperator,
    Python,
    PythonOperator,
    TriggerRule,
    XComArg,
    chain,
    cross_downstream,
    dag,
    task,
)

__all__ = [
    "DAG",
    "Asset",
    "AssetAll",
    "AssetAny",
    "BaseOperator",
    "Bash",
    "BashOperator",
    "Python",
    "PythonOperator",
    "TriggerRule",
    "XComArg",
    "chain",
    "cross_downstream",
    "dag",
    "task",
]
