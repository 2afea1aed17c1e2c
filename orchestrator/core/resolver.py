"""The dependency resolver: which task instances of a run may start, be skipped, or fail upstream.

A task's fate depends only on its trigger rule and the states of its *direct* upstream
tasks. The rules are Airflow's, evaluated the way Airflow's scheduler evaluates them
(``TriggerRuleDep`` with ``flag_upstream_failed=True``): a task is not only released when
its rule is met, it is also *decided* -- skipped or marked upstream_failed -- as soon as
the upstream states make the rule impossible, without waiting for the other upstreams.

Counts below are over the direct upstreams: ``s`` success, ``sk`` skipped, ``f`` failed,
``uf`` upstream_failed, ``done = s + sk + f + uf``, ``n`` = number of upstreams. A rule's
rows are checked top to bottom; the first that holds wins; if none holds the task waits.

=============================  =====================================  ===============
rule                           condition                              verdict
=============================  =====================================  ===============
all_success (default)          f + uf > 0                             upstream_failed
                               sk > 0                                 skipped
                               s == n                                 run
all_failed                     s + sk > 0                             skipped
                               f + uf == n                            run
all_done                       done == n                              run
all_done_min_one_success       sk > 0                                 skipped
                               done == n and s == 0                   upstream_failed
                               done == n                              run
all_skipped                    s + f + uf > 0                         skipped
                               sk == n                                run
one_success                    done == n and sk == n                  skipped
                               done == n and s == 0                   upstream_failed
                               s > 0  (the first success fires it)    run
one_failed                     done == n and f + uf == 0              skipped
                               f + uf > 0  (the first failure)        run
one_done                       done == n and s + f == 0               skipped
                               s + f > 0                              run
none_failed                    f + uf > 0                             upstream_failed
                               s + sk == n                            run
none_failed_min_one_success    f + uf > 0                             upstream_failed
                               sk == n                                skipped
                               s + sk == n                            run
none_skipped                   sk > 0                                 skipped
                               done == n                              run
always                         --                                     run
=============================  =====================================  ===============

A task with no upstream runs whatever its rule. An upstream in state ``removed`` (the task
no longer exists in the DAG) is done and ignored: it is left out of ``n`` and of every
count, as Airflow leaves a removed task out of ``upstream_task_ids`` -- so a task whose
upstreams were all removed runs. ``up_for_retry`` and ``deferred`` upstreams are not done.

Only task instances in state ``none`` are decided. A ``scheduled`` one already had its
dependencies met and is never re-decided; every other state belongs to the executor or
is final. Skips and upstream failures propagate: a task decided in a pass is seen by its
downstream tasks in the same pass (the walk is in topological order), so one call
reaches the fixpoint.

`resolve` evaluates a whole run (run start, recovery after a restart); `resolve_after`
evaluates only what a set of just-finished tasks can affect and costs O(affected tasks),
which is what keeps the per-task overhead flat in large runs.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from orchestrator.core.model import DagSpec, TriggerRule
from orchestrator.core.states import FINISHED_TASK_STATES, RunState, TaskState
from orchestrator.errors import OrchestratorError

_NONE = TaskState.NONE
_SUCCESS = TaskState.SUCCESS
_SKIPPED = TaskState.SKIPPED
_FAILED = TaskState.FAILED
_UPSTREAM_FAILED = TaskState.UPSTREAM_FAILED
_REMOVED = TaskState.REMOVED


class DagGraphError(OrchestratorError):
    """The DAG's dependencies do not form a graph the scheduler can run: fix the named tasks."""


class Verdict(StrEnum):
    """What the resolver decides for one task instance in state `none`."""

    WAIT = "wait"  # the rule is neither met nor impossible yet
    RUN = "run"  # dependencies met: the task may be scheduled/queued
    SKIP = "skip"  # the task becomes skipped
    UPSTREAM_FAILED = "upstream_failed"  # the task becomes upstream_failed


_W, _RUN, _SKIP, _UF = Verdict.WAIT, Verdict.RUN, Verdict.SKIP, Verdict.UPSTREAM_FAILED

# One function per rule, over (s, sk, f, uf, n); done is s + sk + f + uf. Kept as plain
# functions in a table so the hot path is a dict lookup and a few integer comparisons.
_Rule = Callable[[int, int, int, int, int], Verdict]


def _all_success(s: int, sk: int, f: int, uf: int, n: int) -> Verdict:
    if f or uf:
        return _UF
    if sk:
        return _SKIP
    return _RUN if s == n else _W


def _all_failed(s: int, sk: int, f: int, uf: int, n: int) -> Verdict:
    if s or sk:
        return _SKIP
    return _RUN if f + uf == n else _W


def _all_done(s: int, sk: int, f: int, uf: int, n: int) -> Verdict:
    return _RUN if s + sk + f + uf == n else _W


def _all_done_min_one_success(s: int, sk: int, f: int, uf: int, n: int) -> Verdict:
    if sk:
        return _SKIP
    if s + f + uf == n:
        return _RUN if s else _UF
    return _W


def _all_skipped(s: int, sk: int, f: int, uf: int, n: int) -> Verdict:
    if s or f or uf:
        return _SKIP
    return _RUN if sk == n else _W


def _one_success(s: int, sk: int, f: int, uf: int, n: int) -> Verdict:
    if s + sk + f + uf == n:
        if sk == n:
            return _SKIP
        if not s:
            return _UF
    return _RUN if s else _W


def _one_failed(s: int, sk: int, f: int, uf: int, n: int) -> Verdict:
    if f or uf:
        return _RUN
    return _SKIP if s + sk == n else _W


def _one_done(s: int, sk: int, f: int, uf: int, n: int) -> Verdict:
    if s or f:
        return _RUN
    return _SKIP if sk + uf == n else _W


def _none_failed(s: int, sk: int, f: int, uf: int, n: int) -> Verdict:
    if f or uf:
        return _UF
    return _RUN if s + sk == n else _W


def _none_failed_min_one_success(s: int, sk: int, f: int, uf: int, n: int) -> Verdict:
    if f or uf:
        return _UF
    if sk == n:
        return _SKIP
    return _RUN if s + sk == n else _W


def _none_skipped(s: int, sk: int, f: int, uf: int, n: int) -> Verdict:
    if sk:
        return _SKIP
    return _RUN if s + f + uf == n else _W


def _always(s: int, sk: int, f: int, uf: int, n: int) -> Verdict:
    return _RUN


_RULES: Mapping[TriggerRule, _Rule] = MappingProxyType(
    {
        TriggerRule.ALL_SUCCESS: _all_success,
        TriggerRule.ALL_FAILED: _all_failed,
        TriggerRule.ALL_DONE: _all_done,
        TriggerRule.ALL_DONE_MIN_ONE_SUCCESS: _all_done_min_one_success,
        TriggerRule.ALL_SKIPPED: _all_skipped,
        TriggerRule.ONE_SUCCESS: _one_success,
        TriggerRule.ONE_FAILED: _one_failed,
        TriggerRule.ONE_DONE: _one_done,
        TriggerRule.NONE_FAILED: _none_failed,
        TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS: _none_failed_min_one_success,
        TriggerRule.NONE_SKIPPED: _none_skipped,
        TriggerRule.ALWAYS: _always,
    }
)


def evaluate(rule: TriggerRule, upstream_states: Sequence[TaskState]) -> Verdict:
    """Decide one task from its trigger rule and its direct upstreams' states (see the table)."""
    s = sk = f = uf = n = 0
    for state in upstream_states:
        if state == _SUCCESS:
            s += 1
        elif state == _SKIPPED:
            sk += 1
        elif state == _FAILED:
            f += 1
        elif state == _UPSTREAM_FAILED:
            uf += 1
        elif state == _REMOVED:
            continue  # done and ignored: not an upstream any more
        n += 1
    if n == 0:
        return _RUN
    try:
        decide = _RULES[rule]
    except KeyError:
        raise DagGraphError(
            f"unknown trigger rule {rule!r}: use one of {', '.join(r.value for r in TriggerRule)}"
        ) from None
    return decide(s, sk, f, uf, n)


@dataclass(frozen=True)
class DagGraph:
    """The dependency graph of one DagSpec, computed once and reused for every decision."""

    spec: DagSpec
    upstream: Mapping[str, tuple[str, ...]]
    downstream: Mapping[str, tuple[str, ...]]
    #: topological order; the spec's own order wherever the spec already is topological
    order: tuple[str, ...]
    #: tasks with no downstream (they decide the run's outcome)
    leaves: frozenset[str]
    #: task id -> position in `order`
    index: Mapping[str, int] = field(repr=False)
    #: task id -> trigger rule
    rules: Mapping[str, TriggerRule] = field(repr=False)

    @classmethod
    def from_spec(cls, spec: DagSpec) -> DagGraph:
        """Build the graph; raise `DagGraphError` on duplicate ids, unknown upstreams or a cycle."""
        position: dict[str, int] = {}
        for i, task in enumerate(spec.tasks):
            if task.task_id in position:
                raise DagGraphError(
                    f"DAG {spec.dag_id!r} defines task {task.task_id!r} twice: "
                    f"give each task a unique task_id"
                )
            position[task.task_id] = i

        upstream: dict[str, tuple[str, ...]] = {}
        children: dict[str, list[str]] = {task.task_id: [] for task in spec.tasks}
        for task in spec.tasks:
            ups = tuple(dict.fromkeys(task.upstream))  # drop repeated edges, keep order
            for up in ups:
                if up not in position:
                    raise DagGraphError(
                        f"task {task.task_id!r} of DAG {spec.dag_id!r} depends on {up!r}, which the DAG "
                        f"does not define: add that task or remove the dependency"
                    )
                children[up].append(task.task_id)
            upstream[task.task_id] = ups

        # Kahn's algorithm, always releasing the ready task that comes first in the spec.
        pending = {tid: len(ups) for tid, ups in upstream.items()}
        ready = [position[tid] for tid, count in pending.items() if count == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            tid = spec.tasks[heapq.heappop(ready)].task_id
            order.append(tid)
            for child in children[tid]:
                pending[child] -= 1
                if pending[child] == 0:
                    heapq.heappush(ready, position[child])
        if len(order) != len(spec.tasks):
            cycle = _find_cycle(upstream, {tid for tid, count in pending.items() if count > 0})
            raise DagGraphError(
                f"DAG {spec.dag_id!r} has a dependency cycle: {' -> '.join(map(repr, cycle))}; "
                f"remove one of these dependencies"
            )

        downstream = {tid: tuple(kids) for tid, kids in children.items()}
        return cls(
            spec=spec,
            upstream=MappingProxyType(upstream),
            downstream=MappingProxyType(downstream),
            order=tuple(order),
            leaves=frozenset(tid for tid, kids in downstream.items() if not kids),
            index=MappingProxyType({tid: i for i, tid in enumerate(order)}),
            rules=MappingProxyType({task.task_id: task.trigger_rule for task in spec.tasks}),
        )


def _find_cycle(upstream: Mapping[str, tuple[str, ...]], stuck: set[str]) -> list[str]:
    """One cycle among the tasks Kahn's algorithm could not order, in dependency order.

    Every stuck task has a stuck upstream (that is why it is stuck), so walking upstream
    through stuck tasks must revisit one; the walk from there is a cycle.
    """
    seen: dict[str, int] = {}
    walk: list[str] = []
    task_id = min(stuck)
    while task_id not in seen:
        seen[task_id] = len(walk)
        walk.append(task_id)
        task_id = next(up for up in upstream[task_id] if up in stuck)
    cycle = walk[seen[task_id] :]
    cycle.reverse()  # upstream walk -> dependency order (a -> b means b depends on a)
    return [*cycle, cycle[0]]


@dataclass(frozen=True, slots=True)
class Resolution:
    """The decisions of one resolver pass, each in topological order."""

    #: dependencies met: may be scheduled/queued
    run: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    upstream_failed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.run or self.skip or self.upstream_failed)


_NOTHING = Resolution()


class _Pass:
    """One resolver pass: the states decided so far, seen by the tasks decided after them."""

    __slots__ = ("decided", "graph", "run", "skip", "states", "upstream_failed")

    def __init__(self, graph: DagGraph, states: Mapping[str, TaskState]) -> None:
        self.graph = graph
        self.states = states
        self.decided: dict[str, TaskState] = {}
        self.run: list[str] = []
        self.skip: list[str] = []
        self.upstream_failed: list[str] = []

    def decide(self, task_id: str) -> bool:
        """Decide one task; True when it became skipped/upstream_failed (its downstream may change)."""
        states = self.states
        if states.get(task_id, _NONE) != _NONE:
            return False
        decided = self.decided
        upstream_states = [decided.get(up) or states.get(up, _NONE) for up in self.graph.upstream[task_id]]
        verdict = evaluate(self.graph.rules[task_id], upstream_states)
        if verdict is _RUN:
            self.run.append(task_id)
        elif verdict is _SKIP:
            self.skip.append(task_id)
            decided[task_id] = _SKIPPED
            return True
        elif verdict is _UF:
            self.upstream_failed.append(task_id)
            decided[task_id] = _UPSTREAM_FAILED
            return True
        return False

    def resolution(self) -> Resolution:
        return Resolution(tuple(self.run), tuple(self.skip), tuple(self.upstream_failed))


def resolve(graph: DagGraph, states: Mapping[str, TaskState]) -> Resolution:
    """Evaluate every task of a run in state `none` (a task absent from `states` counts as `none`).

    Used at run start and on recovery. O(tasks + edges).
    """
    run_pass = _Pass(graph, states)
    for task_id in graph.order:
        run_pass.decide(task_id)
    return run_pass.resolution()


def resolve_after(graph: DagGraph, states: Mapping[str, TaskState], finished: Iterable[str]) -> Resolution:
    """Evaluate only the downstream of the just-finished tasks (and, transitively, of the tasks
    this call skips or marks upstream_failed).

    `states` must already hold the finished tasks' new states. Gives the same decisions as
    `resolve` would for those tasks, at O(affected tasks and their edges) cost. Ids that are
    not in the graph (tasks removed from the DAG) are ignored.
    """
    index = graph.index
    downstream = graph.downstream
    # A min-heap on topological position: every push is a downstream of the task being
    # decided, so pops come out in topological order and each task sees its upstreams final.
    heap: list[tuple[int, str]] = []
    queued: set[str] = set()

    def enqueue_downstream(task_id: str) -> None:
        for child in downstream[task_id]:
            if child not in queued:
                queued.add(child)
                heapq.heappush(heap, (index[child], child))

    for task_id in finished:
        if task_id in index:
            enqueue_downstream(task_id)
    if not heap:
        return _NOTHING  # finished leaves: the common case at the end of a wide run
    run_pass = _Pass(graph, states)
    while heap:
        _, task_id = heapq.heappop(heap)
        if run_pass.decide(task_id):
            enqueue_downstream(task_id)
    return run_pass.resolution()


def run_outcome(graph: DagGraph, states: Mapping[str, TaskState]) -> RunState | None:
    """The run's final state, or None while any of its task instances is unfinished.

    Airflow's rule: the run failed if any leaf task (no downstream) is failed or
    upstream_failed, else it succeeded. `states` is every task instance of the run.
    """
    if not FINISHED_TASK_STATES.issuperset(states.values()):
        return None
    for leaf in graph.leaves:
        if states.get(leaf) in (_FAILED, _UPSTREAM_FAILED):
            return RunState.FAILED
    return RunState.SUCCESS
