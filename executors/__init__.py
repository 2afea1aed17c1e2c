"""Where tasks run. The engine reaches these only through `orchestrator.ports.Executor`.

- `executors.local.LocalExecutor`: bash tasks as subprocesses, Python tasks in warm workers.
- `executors.parser.DagParserPool`: DAG files imported in parser processes, never in the daemon.
- `executors.spawn`, `executors.workers`, `executors.pyworker`: the process machinery under them.

Kept free of imports so that `python -m executors.pyworker` starts fast.
"""
