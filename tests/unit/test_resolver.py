"""The resolver decides tasks exactly as Airflow's scheduler does (TriggerRuleDep with
flag_upstream_failed), propagates skips and upstream failures in one pass, and decides
incrementally at the cost of the affected tasks only."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping

import pytest

from orchestrator.core.model import DagSpec, TaskSpec, TriggerRule
from orchestrator.core.resolver import (
    DagGraph,
    DagGraphError,
    Resolution,
    Verdict,
    evaluate,
    resolve,
    resolve_after,
    run_outcome,
)
from orchestrator.core.states import FINISHED_TASK_STATES, RunState, TaskState

TR = TriggerRule
S, K, F, U, R = "S", "K", "F", "U", "R"
CODES = {
    "S": TaskState.SUCCESS,
    "K": TaskState.SKIPPED,
    "F": TaskState.FAILED,
    "U": TaskState.UPSTREAM_FAILED,
    "R": TaskState.REMOVED,
    "N": TaskState.NONE,
    "C": TaskState.SCHEDULED,
    "Q": TaskState.QUEUED,
    "X": TaskState.RUNNING,
    "Y": TaskState.UP_FOR_RETRY,
    "D": TaskState.DEFERRED,
}
RUN, WAIT, SKIP, UF = Verdict.RUN, Verdict.WAIT, Verdict.SKIP, Verdict.UPSTREAM_FAILED


def states_of(codes: str) -> list[TaskState]:
    return [CODES[c] for c in codes]


# (rule, upstream states as codes, verdict). Codes: S success, K skipped, F failed,
# U upstream_failed, R removed, N none, C scheduled, Q queued, X running, Y up_for_retry,
# D deferred.
EVALUATE_CASES = [
    # all_success: fails fast on one failure, skips on one skip, otherwise waits for all
    (TR.ALL_SUCCESS, "S", RUN),
    (TR.ALL_SUCCESS, "SSS", RUN),
    (TR.ALL_SUCCESS, "SN", WAIT),
    (TR.ALL_SUCCESS, "SX", WAIT),
    (TR.ALL_SUCCESS, "SY", WAIT),
    (TR.ALL_SUCCESS, "SD", WAIT),
    (TR.ALL_SUCCESS, "SC", WAIT),
    (TR.ALL_SUCCESS, "FN", UF),
    (TR.ALL_SUCCESS, "NNU", UF),
    (TR.ALL_SUCCESS, "KN", SKIP),
    (TR.ALL_SUCCESS, "KS", SKIP),
    (TR.ALL_SUCCESS, "KF", UF),
    (TR.ALL_SUCCESS, "SR", RUN),
    (TR.ALL_SUCCESS, "RR", RUN),
    # all_failed
    (TR.ALL_FAILED, "FF", RUN),
    (TR.ALL_FAILED, "FU", RUN),
    (TR.ALL_FAILED, "UU", RUN),
    (TR.ALL_FAILED, "FN", WAIT),
    (TR.ALL_FAILED, "FY", WAIT),
    (TR.ALL_FAILED, "FS", SKIP),
    (TR.ALL_FAILED, "KN", SKIP),
    (TR.ALL_FAILED, "SN", SKIP),
    (TR.ALL_FAILED, "FR", RUN),
    # all_done
    (TR.ALL_DONE, "SFKU", RUN),
    (TR.ALL_DONE, "KK", RUN),
    (TR.ALL_DONE, "SN", WAIT),
    (TR.ALL_DONE, "FY", WAIT),
    (TR.ALL_DONE, "FD", WAIT),
    (TR.ALL_DONE, "SR", RUN),
    # all_done_min_one_success (Airflow 3.1): a skip skips; all done without success fails
    (TR.ALL_DONE_MIN_ONE_SUCCESS, "SS", RUN),
    (TR.ALL_DONE_MIN_ONE_SUCCESS, "SF", RUN),
    (TR.ALL_DONE_MIN_ONE_SUCCESS, "SU", RUN),
    (TR.ALL_DONE_MIN_ONE_SUCCESS, "FF", UF),
    (TR.ALL_DONE_MIN_ONE_SUCCESS, "FU", UF),
    (TR.ALL_DONE_MIN_ONE_SUCCESS, "SK", SKIP),
    (TR.ALL_DONE_MIN_ONE_SUCCESS, "KN", SKIP),
    (TR.ALL_DONE_MIN_ONE_SUCCESS, "SN", WAIT),
    (TR.ALL_DONE_MIN_ONE_SUCCESS, "FN", WAIT),
    (TR.ALL_DONE_MIN_ONE_SUCCESS, "SR", RUN),
    (TR.ALL_DONE_MIN_ONE_SUCCESS, "FR", UF),
    # all_skipped: anything but a skip skips it, without waiting
    (TR.ALL_SKIPPED, "K", RUN),
    (TR.ALL_SKIPPED, "KK", RUN),
    (TR.ALL_SKIPPED, "KN", WAIT),
    (TR.ALL_SKIPPED, "KS", SKIP),
    (TR.ALL_SKIPPED, "NF", SKIP),
    (TR.ALL_SKIPPED, "NU", SKIP),
    (TR.ALL_SKIPPED, "KR", RUN),
    # one_success: the first success fires it
    (TR.ONE_SUCCESS, "SN", RUN),
    (TR.ONE_SUCCESS, "XS", RUN),
    (TR.ONE_SUCCESS, "SF", RUN),
    (TR.ONE_SUCCESS, "NN", WAIT),
    (TR.ONE_SUCCESS, "FN", WAIT),
    (TR.ONE_SUCCESS, "KN", WAIT),
    (TR.ONE_SUCCESS, "FF", UF),
    (TR.ONE_SUCCESS, "FK", UF),
    (TR.ONE_SUCCESS, "KU", UF),
    (TR.ONE_SUCCESS, "UU", UF),
    (TR.ONE_SUCCESS, "KK", SKIP),
    (TR.ONE_SUCCESS, "KR", SKIP),
    # one_failed: the first failure fires it
    (TR.ONE_FAILED, "FN", RUN),
    (TR.ONE_FAILED, "UN", RUN),
    (TR.ONE_FAILED, "SF", RUN),
    (TR.ONE_FAILED, "SN", WAIT),
    (TR.ONE_FAILED, "NN", WAIT),
    (TR.ONE_FAILED, "SS", SKIP),
    (TR.ONE_FAILED, "SK", SKIP),
    (TR.ONE_FAILED, "KK", SKIP),
    # one_done: the first success or failure fires it
    (TR.ONE_DONE, "SN", RUN),
    (TR.ONE_DONE, "FN", RUN),
    (TR.ONE_DONE, "KS", RUN),
    (TR.ONE_DONE, "KN", WAIT),
    (TR.ONE_DONE, "UN", WAIT),
    (TR.ONE_DONE, "KK", SKIP),
    (TR.ONE_DONE, "KU", SKIP),
    (TR.ONE_DONE, "UU", SKIP),
    # none_failed
    (TR.NONE_FAILED, "SK", RUN),
    (TR.NONE_FAILED, "KK", RUN),
    (TR.NONE_FAILED, "SS", RUN),
    (TR.NONE_FAILED, "SN", WAIT),
    (TR.NONE_FAILED, "KY", WAIT),
    (TR.NONE_FAILED, "FN", UF),
    (TR.NONE_FAILED, "UN", UF),
    # none_failed_min_one_success: the usual join after a branch
    (TR.NONE_FAILED_MIN_ONE_SUCCESS, "SK", RUN),
    (TR.NONE_FAILED_MIN_ONE_SUCCESS, "SS", RUN),
    (TR.NONE_FAILED_MIN_ONE_SUCCESS, "KK", SKIP),
    (TR.NONE_FAILED_MIN_ONE_SUCCESS, "K", SKIP),
    (TR.NONE_FAILED_MIN_ONE_SUCCESS, "KR", SKIP),
    (TR.NONE_FAILED_MIN_ONE_SUCCESS, "KN", WAIT),
    (TR.NONE_FAILED_MIN_ONE_SUCCESS, "SN", WAIT),
    (TR.NONE_FAILED_MIN_ONE_SUCCESS, "FN", UF),
    (TR.NONE_FAILED_MIN_ONE_SUCCESS, "US", UF),
    # none_skipped
    (TR.NONE_SKIPPED, "SF", RUN),
    (TR.NONE_SKIPPED, "SU", RUN),
    (TR.NONE_SKIPPED, "FF", RUN),
    (TR.NONE_SKIPPED, "SN", WAIT),
    (TR.NONE_SKIPPED, "KN", SKIP),
    (TR.NONE_SKIPPED, "SK", SKIP),
    # always: never waits
    (TR.ALWAYS, "NN", RUN),
    (TR.ALWAYS, "XQ", RUN),
    (TR.ALWAYS, "FF", RUN),
    (TR.ALWAYS, "KK", RUN),
]


@pytest.mark.parametrize(("rule", "upstream", "verdict"), EVALUATE_CASES)
def test_trigger_rule_verdict(rule: TriggerRule, upstream: str, verdict: Verdict) -> None:
    assert evaluate(rule, states_of(upstream)) is verdict


@pytest.mark.parametrize("rule", list(TriggerRule))
def test_a_task_without_upstream_runs_whatever_its_rule(rule: TriggerRule) -> None:
    assert evaluate(rule, []) is RUN


@pytest.mark.parametrize("rule", list(TriggerRule))
def test_a_task_whose_upstreams_were_all_removed_runs(rule: TriggerRule) -> None:
    assert evaluate(rule, states_of("RR")) is RUN


@pytest.mark.parametrize("rule", list(TriggerRule))
def test_every_rule_decides_once_all_upstreams_are_finished(rule: TriggerRule) -> None:
    finished = "SKFU"
    for a in finished:
        for b in finished:
            assert evaluate(rule, states_of(a + b)) is not WAIT, (rule, a + b)


def test_every_rule_is_covered_by_the_table() -> None:
    assert {rule for rule, _, _ in EVALUATE_CASES} == set(TriggerRule)


# --- the graph ----------------------------------------------------------------------------


def task(task_id: str, *upstream: str, rule: TriggerRule = TR.ALL_SUCCESS) -> TaskSpec:
    return TaskSpec(
        task_id=task_id, kind="bash", upstream=upstream, trigger_rule=rule, args={"bash_command": "true"}
    )


def graph(*tasks: TaskSpec) -> DagGraph:
    return DagGraph.from_spec(DagSpec(dag_id="d", fileloc="d.py", tasks=tasks))


def test_graph_orders_tasks_topologically_and_finds_leaves() -> None:
    g = graph(task("d", "b", "c"), task("c", "a"), task("b", "a"), task("a"), task("e"))
    assert g.order == ("a", "c", "b", "d", "e")
    assert g.leaves == frozenset({"d", "e"})
    assert g.upstream["d"] == ("b", "c")
    assert set(g.downstream["a"]) == {"b", "c"}
    assert g.downstream["d"] == ()


def test_graph_keeps_the_spec_order_when_it_is_already_topological() -> None:
    g = graph(task("x"), task("a"), task("m", "x"), task("b", "a"))
    assert g.order == ("x", "a", "m", "b")


def test_graph_drops_repeated_edges() -> None:
    g = graph(task("a"), task("b", "a", "a"))
    assert g.upstream["b"] == ("a",)
    assert g.downstream["a"] == ("b",)


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ((task("a"), task("a")), "defines task 'a' twice"),
        ((task("a", "ghost"),), "depends on 'ghost', which the DAG does not define"),
        ((task("a", "b"), task("b", "a"), task("c")), "cycle: 'b' -> 'a' -> 'b'"),
        ((task("a", "a"),), "cycle: 'a' -> 'a'"),
        # the tasks stuck behind the cycle (d) are not blamed for it
        (
            (task("d", "a"), task("a", "c"), task("b", "a"), task("c", "b")),
            "cycle: 'b' -> 'c' -> 'a' -> 'b';",
        ),
    ],
)
def test_graph_rejects_broken_dags_with_a_message_naming_the_tasks(
    tasks: tuple[TaskSpec, ...], message: str
) -> None:
    with pytest.raises(DagGraphError, match=message):
        graph(*tasks)


# --- whole-run resolution -----------------------------------------------------------------


def st(**codes: str) -> dict[str, TaskState]:
    return {task_id: CODES[code] for task_id, code in codes.items()}


CHAIN = graph(task("a"), task("b", "a"), task("c", "b"), task("d", "c"), task("e", "d", rule=TR.ALL_DONE))
DIAMOND = graph(task("a"), task("b", "a"), task("c", "a"), task("d", "b", "c"))
BRANCH = graph(
    task("branch"),
    task("left", "branch"),
    task("right", "branch"),
    task("join", "left", "right", rule=TR.NONE_FAILED_MIN_ONE_SUCCESS),
    task("strict_join", "left", "right"),
    task("after", "join"),
)

RESOLVE_CASES = [
    # name, graph, states, expected (run, skip, upstream_failed)
    ("new run releases the roots", DIAMOND, st(a="N", b="N", c="N", d="N"), (("a",), (), ())),
    ("absent tasks count as none", DIAMOND, {}, (("a",), (), ())),
    ("success releases the next", CHAIN, st(a="S", b="N", c="N", d="N", e="N"), (("b",), (), ())),
    (
        "a failure propagates down the chain in one pass, all_done then runs",
        CHAIN,
        st(a="F", b="N", c="N", d="N", e="N"),
        (("e",), (), ("b", "c", "d")),
    ),
    (
        "a skip propagates down the chain in one pass",
        CHAIN,
        st(a="K", b="N", c="N", d="N", e="N"),
        (("e",), ("b", "c", "d"), ()),
    ),
    ("diamond waits for both sides", DIAMOND, st(a="S", b="S", c="X", d="N"), ((), (), ())),
    ("diamond joins when both succeed", DIAMOND, st(a="S", b="S", c="S", d="N"), (("d",), (), ())),
    ("diamond fails fast on one side", DIAMOND, st(a="S", b="F", c="X", d="N"), ((), (), ("d",))),
    (
        "diamond root failure reaches every task",
        DIAMOND,
        st(a="F", b="N", c="N", d="N"),
        ((), (), ("b", "c", "d")),
    ),
    ("both sides released together", DIAMOND, st(a="S", b="N", c="N", d="N"), (("b", "c"), (), ())),
    (
        "branch: the join runs, the strict join and nothing after it is skipped",
        BRANCH,
        st(branch="S", left="K", right="S", join="N", strict_join="N", after="N"),
        (("join",), ("strict_join",), ()),
    ),
    (
        "branch: both arms skipped skips the join and what follows it",
        BRANCH,
        st(branch="S", left="K", right="K", join="N", strict_join="N", after="N"),
        ((), ("join", "strict_join", "after"), ()),
    ),
    (
        "scheduled tasks are not re-decided, and their downstream waits",
        CHAIN,
        st(a="F", b="C", c="N", d="N", e="N"),
        ((), (), ()),
    ),
    (
        "only tasks in none are decided",
        DIAMOND,
        st(a="S", b="Q", c="Y", d="N"),
        ((), (), ()),
    ),
    (
        "finished tasks are left alone",
        CHAIN,
        st(a="F", b="S", c="N", d="N", e="N"),
        (("c",), (), ()),
    ),
]


@pytest.mark.parametrize(
    ("g", "states", "expected"), [case[1:] for case in RESOLVE_CASES], ids=[case[0] for case in RESOLVE_CASES]
)
def test_resolve(g: DagGraph, states: dict[str, TaskState], expected: tuple[tuple[str, ...], ...]) -> None:
    assert resolve(g, states) == Resolution(*expected)


def test_resolve_lists_decisions_in_topological_order() -> None:
    g = graph(task("z", "y"), task("y", "x"), task("x"), task("w"))
    assert resolve(g, st(x="F")) == Resolution(run=("w",), skip=(), upstream_failed=("y", "z"))


def test_empty_resolution_is_falsy() -> None:
    assert not Resolution()
    assert Resolution(run=("a",))


# --- incremental resolution ---------------------------------------------------------------

RESOLVE_AFTER_CASES = [
    (
        "only the finished task's downstream is decided (roots are not re-released)",
        graph(task("a"), task("b", "a"), task("c")),
        st(a="S", b="N", c="N"),
        ["a"],
        (("b",), (), ()),
    ),
    (
        "propagates transitively through tasks it fails",
        CHAIN,
        st(a="F", b="N", c="N", d="N", e="N"),
        ["a"],
        (("e",), (), ("b", "c", "d")),
    ),
    (
        "a downstream with another unfinished upstream waits",
        DIAMOND,
        st(a="S", b="S", c="X", d="N"),
        ["b"],
        ((), (), ()),
    ),
    (
        "several finished tasks in one call",
        DIAMOND,
        st(a="S", b="S", c="S", d="N"),
        ["b", "c"],
        (("d",), (), ()),
    ),
    ("unknown ids are ignored", DIAMOND, st(a="S", b="N", c="N", d="N"), ["gone", "a"], (("b", "c"), (), ())),
    ("a leaf has nothing to decide", DIAMOND, st(a="S", b="S", c="S", d="S"), ["d"], ((), (), ())),
]


@pytest.mark.parametrize(
    ("g", "states", "finished", "expected"),
    [case[1:] for case in RESOLVE_AFTER_CASES],
    ids=[case[0] for case in RESOLVE_AFTER_CASES],
)
def test_resolve_after(
    g: DagGraph, states: dict[str, TaskState], finished: list[str], expected: tuple[tuple[str, ...], ...]
) -> None:
    assert resolve_after(g, states, finished) == Resolution(*expected)


def random_graph(rng: random.Random, size: int) -> DagGraph:
    rules = list(TriggerRule)
    tasks = []
    for i in range(size):
        candidates = [f"t{j}" for j in range(i)]
        upstream = rng.sample(candidates, k=min(len(candidates), rng.choice([0, 1, 1, 2, 2, 3, 4])))
        tasks.append(task(f"t{i}", *upstream, rule=rng.choice(rules)))
    rng.shuffle(tasks)  # the graph, not the spec order, must provide the topological order
    return graph(*tasks)


def apply(states: dict[str, TaskState], resolution: Resolution) -> None:
    for task_id in resolution.run:
        states[task_id] = TaskState.QUEUED
    for task_id in resolution.skip:
        states[task_id] = TaskState.SKIPPED
    for task_id in resolution.upstream_failed:
        states[task_id] = TaskState.UPSTREAM_FAILED


@pytest.mark.parametrize("seed", range(40))
def test_resolve_after_matches_resolve_through_a_whole_simulated_run(seed: int) -> None:
    rng = random.Random(seed)
    g = random_graph(rng, size=rng.randint(2, 40))
    states = {task_id: TaskState.NONE for task_id in g.order}
    apply(states, resolve(g, states))
    outcomes = [TaskState.SUCCESS, TaskState.SUCCESS, TaskState.FAILED, TaskState.SKIPPED]
    while queued := sorted(t for t, s in states.items() if s == TaskState.QUEUED):
        batch = rng.sample(queued, k=rng.randint(1, min(3, len(queued))))
        for task_id in batch:
            states[task_id] = rng.choice(outcomes)
        incremental = resolve_after(g, states, batch)
        assert incremental == resolve(g, states), (seed, batch, states)
        apply(states, incremental)
    assert all(s in FINISHED_TASK_STATES for s in states.values()), "every task must end decided"
    assert run_outcome(g, states) is not None


class CountingStates(Mapping[str, TaskState]):
    """A state mapping that counts lookups, to check how much of the run a call touches."""

    def __init__(self, data: dict[str, TaskState]) -> None:
        self.data = data
        self.reads = 0

    def __getitem__(self, key: str) -> TaskState:
        self.reads += 1
        return self.data[key]

    def get(self, key: str, default: object = None) -> TaskState | None:  # type: ignore[override]
        self.reads += 1
        return self.data.get(key, default)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def test_resolve_after_touches_only_affected_tasks_in_a_large_run() -> None:
    # 2,000 independent tasks, each with its own downstream task, finishing one by one.
    size = 2000
    g = graph(*[task(f"r{i}") for i in range(size)], *[task(f"c{i}", f"r{i}") for i in range(size)])
    states = CountingStates({task_id: TaskState.NONE for task_id in g.order})
    for i in range(size):
        states.data[f"r{i}"] = TaskState.SUCCESS
        before = states.reads
        assert resolve_after(g, states, [f"r{i}"]) == Resolution(run=(f"c{i}",))
        assert states.reads - before <= 3  # the child and its one upstream, whatever the run's size


def test_resolve_after_on_independent_tasks_reads_nothing() -> None:
    g = graph(*[task(f"t{i}") for i in range(2000)])
    states = CountingStates({task_id: TaskState.SUCCESS for task_id in g.order})
    for i in range(2000):
        assert not resolve_after(g, states, [f"t{i}"])
    assert states.reads == 0


# --- run outcome --------------------------------------------------------------------------

RUN_OUTCOME_CASES = [
    ("a task still queued", DIAMOND, st(a="S", b="S", c="Q", d="N"), None),
    ("a task up for retry", DIAMOND, st(a="S", b="S", c="Y", d="N"), None),
    ("a task deferred", DIAMOND, st(a="S", b="S", c="D", d="N"), None),
    ("all succeeded", DIAMOND, st(a="S", b="S", c="S", d="S"), RunState.SUCCESS),
    ("leaf failed", DIAMOND, st(a="S", b="S", c="S", d="F"), RunState.FAILED),
    ("leaf upstream_failed", DIAMOND, st(a="S", b="F", c="S", d="U"), RunState.FAILED),
    ("leaf skipped", DIAMOND, st(a="S", b="K", c="S", d="K"), RunState.SUCCESS),
    (
        "an inner failure absorbed by an all_done leaf",
        CHAIN,
        st(a="S", b="S", c="S", d="F", e="S"),
        RunState.SUCCESS,
    ),
    ("a removed leaf does not fail the run", DIAMOND, st(a="S", b="S", c="S", d="R"), RunState.SUCCESS),
    (
        "one of two leaves failed",
        graph(task("a"), task("b")),
        st(a="S", b="F"),
        RunState.FAILED,
    ),
]


@pytest.mark.parametrize(
    ("g", "states", "expected"),
    [case[1:] for case in RUN_OUTCOME_CASES],
    ids=[case[0] for case in RUN_OUTCOME_CASES],
)
def test_run_outcome(g: DagGraph, states: dict[str, TaskState], expected: RunState | None) -> None:
    assert run_outcome(g, states) == expected
