"""The authoring API: what users write in DAG files (`DAG`, `Bash`, `Python`, `@task`, `>>`).

Imported by every DAG file and every worker process, so it imports only the pure core
and the standard library: never asyncpg, aiohttp, anyio, uvloop, kubernetes or jinja2.
The loader (`orchestrator.authoring.loader`) is not re-exported: only workers need it.
"""

from orchestrator.authoring.assets import Asset, AssetAll, AssetAny
from orchestrator.authoring.dag import DAG
from orchestrator.authoring.operators import (
    BaseOperator,
    Bash,
    BashOperator,
    Python,
    PythonOperator,
    XComArg,
    chain,
    cross_downstream,
)
from orchestrator.authoring.taskflow import dag, task
from orchestrator.core.model import TriggerRule

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
