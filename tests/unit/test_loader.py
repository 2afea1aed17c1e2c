"""The DAG-file loader: import files into DagSpecs, report failures the way users need, find callables."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.authoring.loader import DagFileError, find_callable, load_dag_specs, module_name_for

GOOD = """
from orchestrator import DAG, Bash, task

with DAG("good", schedule="@daily", tags=["t"]) as dag:
    extract = Bash("extract", "echo 21", retries=1, retry_delay=2)

    @task
    def transform(rows):
        return int(rows) * 2

    transform(extract.output)
"""


def write(folder: Path, name: str, source: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


def load_error(path: Path) -> str:
    with pytest.raises(DagFileError) as info:
        load_dag_specs(str(path))
    return str(info.value)


def test_good_file_gives_validated_specs_with_fileloc(tmp_path: Path) -> None:
    path = write(tmp_path, "good.py", GOOD)
    [spec] = load_dag_specs(str(path))
    assert spec.dag_id == "good" and spec.schedule == "@daily" and spec.tags == ("t",)
    assert spec.fileloc == str(path)
    assert [t.task_id for t in spec.tasks] == ["extract", "transform"]
    assert spec.task("transform").upstream == ("extract",)


def test_file_without_dags_gives_empty_list(tmp_path: Path) -> None:
    path = write(tmp_path, "util.py", "VALUE = 1\n")
    assert load_dag_specs(str(path)) == []


def test_dags_not_bound_to_globals_are_found(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "factory.py",
        """
        from orchestrator import DAG, Bash

        def make(n):
            dag = DAG(f"gen_{n}")
            Bash("t", f"echo {n}", dag=dag)

        for n in range(3):
            make(n)
        """,
    )
    assert [s.dag_id for s in load_dag_specs(str(path))] == ["gen_0", "gen_1", "gen_2"]


def test_two_dags_in_one_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "two.py",
        """
        from orchestrator import DAG, Bash
        with DAG("first"):
            Bash("a", "true")
        with DAG("second"):
            Bash("b", "true")
        """,
    )
    assert [s.dag_id for s in load_dag_specs(str(path))] == ["first", "second"]


def test_two_dags_with_the_same_id_is_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "same.py",
        """
        from orchestrator import DAG
        a = DAG("twice")
        b = DAG("twice")
        """,
    )
    message = load_error(path)
    assert "two DAGs have dag_id 'twice'" in message
    assert "same.py:3" in message and "same.py:4" in message


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.py", "from orchestrator import DAG\n\ndef oops(:\n    pass\n")
    message = load_error(path)
    assert message.startswith(str(path))
    assert "SyntaxError" in message and "line 3" in message


def test_import_error_shows_the_dag_file_lines_not_our_internals(tmp_path: Path) -> None:
    path = write(tmp_path, "missing.py", "import os\nimport no_such_module_xyz\n")
    message = load_error(path)
    assert "ModuleNotFoundError" in message and "no_such_module_xyz" in message
    assert f'File "{path}", line 2' in message
    assert "importlib" not in message and "orchestrator/authoring" not in message


def test_authoring_error_points_at_the_users_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "dup.py",
        """
        from orchestrator import DAG, Bash
        with DAG("dup"):
            Bash("a", "true")
            Bash("a", "true")
        """,
    )
    message = load_error(path)
    assert "DuplicateTaskIdFound" in message and "task_id 'a'" in message
    assert f'File "{path}", line 5' in message
    assert "operators.py" not in message and "dag.py" not in message


def test_cycle_is_a_dag_file_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "cycle.py",
        """
        from orchestrator import DAG, Bash
        with DAG("cyc"):
            a, b, c = Bash("a", "true"), Bash("b", "true"), Bash("c", "true")
            a >> b >> c >> a
        """,
    )
    message = load_error(path)
    assert str(path) in message and "cycle detected: a -> b -> c -> a" in message


def test_sys_exit_in_a_dag_file_is_reported_not_raised(tmp_path: Path) -> None:
    path = write(tmp_path, "exits.py", "import sys\nsys.exit(3)\n")
    assert "sys.exit(3)" in load_error(path)


def test_unclosed_dag_context_does_not_leak_into_the_next_file(tmp_path: Path) -> None:
    leaky = write(tmp_path, "leaky.py", "from orchestrator import DAG\nDAG('leaky').__enter__()\n")
    assert [s.dag_id for s in load_dag_specs(str(leaky))] == ["leaky"]
    plain = write(tmp_path, "plain.py", "from orchestrator import Bash\nBash('orphan', 'true')\n")
    assert "has no DAG" in load_error(plain)


def test_helper_module_next_to_the_file_imports(tmp_path: Path) -> None:
    write(tmp_path, "loader_test_helper_abc.py", "COMMAND = 'echo from helper'\n")
    path = write(
        tmp_path,
        "uses_helper.py",
        """
        from loader_test_helper_abc import COMMAND
        from orchestrator import DAG, Bash
        with DAG("helped"):
            Bash("a", COMMAND)
        """,
    )
    [spec] = load_dag_specs(str(path))
    assert spec.task("a").args["bash_command"] == "echo from helper"
    assert str(tmp_path) not in sys.path


def test_same_file_name_in_two_folders_does_not_clash(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    p1 = write(
        one, "etl.py", "from orchestrator import DAG, Bash\nwith DAG('etl_one'):\n    Bash('a', 'true')\n"
    )
    p2 = write(
        two, "etl.py", "from orchestrator import DAG, Bash\nwith DAG('etl_two'):\n    Bash('a', 'true')\n"
    )
    assert module_name_for(str(p1)) != module_name_for(str(p2))
    assert load_dag_specs(str(p1))[0].dag_id == "etl_one"
    assert load_dag_specs(str(p2))[0].dag_id == "etl_two"


def test_find_callable_returns_the_task_function(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "calls.py",
        """
        from orchestrator import DAG, Bash, Python, task

        def classic(x):
            return x + 1

        with DAG("calls"):
            Bash("b", "true")
            Python("classic", classic)

            @task
            def flow(x):
                return x * 10

            flow(1)
        """,
    )
    assert find_callable(str(path), "calls", "classic")(1) == 2
    assert find_callable(str(path), "calls", "flow")(2) == 20


@pytest.mark.parametrize(
    ("dag_id", "task_id", "expected"),
    [
        ("nope", "a", "defines no DAG 'nope' (DAGs in this file: calls)"),
        ("calls", "nope", "DAG 'calls' has no task 'nope' (tasks: b, p)"),
        ("calls", "b", "is a Bash task, not a Python task"),
    ],
)
def test_find_callable_errors(tmp_path: Path, dag_id: str, task_id: str, expected: str) -> None:
    path = write(
        tmp_path,
        "calls.py",
        "from orchestrator import DAG, Bash, Python\n"
        "with DAG('calls'):\n    Bash('b', 'true')\n    Python('p', print)\n",
    )
    with pytest.raises(DagFileError) as info:
        find_callable(str(path), dag_id, task_id)
    assert expected in str(info.value)


def test_find_callable_caches_the_module_and_reimports_a_changed_file(tmp_path: Path) -> None:
    source = """
    from orchestrator import DAG, task
    import itertools
    IMPORTS = next(itertools.count())
    with DAG("changing"):
        @task
        def value():
            return {value!r}
        value()
    """
    path = write(tmp_path, "changing.py", source.format(value="old"))
    first = find_callable(str(path), "changing", "value")
    assert first() == "old"
    assert find_callable(str(path), "changing", "value") is first  # unchanged file: not re-imported

    stat = path.stat()
    write(tmp_path, "changing.py", source.format(value="newer"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = find_callable(str(path), "changing", "value")
    assert second() == "newer"
    assert second is not first


def test_find_callable_on_a_file_that_broke_reports_the_error(tmp_path: Path) -> None:
    path = write(tmp_path, "breaks.py", GOOD)
    assert find_callable(str(path), "good", "transform")(2) == 4
    stat = path.stat()
    write(tmp_path, "breaks.py", GOOD + "\nraise RuntimeError('boom')\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(DagFileError, match="RuntimeError while importing the DAG file: boom"):
        find_callable(str(path), "good", "transform")


def test_missing_file_is_a_dag_file_error(tmp_path: Path) -> None:
    message = load_error(tmp_path / "gone.py")
    assert "cannot read the DAG file" in message


@pytest.mark.parametrize("name", ["example_etl.py", "example_branches.py"])
def test_shipped_example_dags_load(name: str) -> None:
    path = Path(__file__).resolve().parents[2] / "dags" / name
    specs = load_dag_specs(str(path))
    assert [s.dag_id for s in specs] == [name.removesuffix(".py")]


def test_traceback_keeps_helper_frames_and_drops_the_standard_library(tmp_path: Path) -> None:
    write(
        tmp_path, "loader_test_helper_json.py", "import json\n\ndef parse():\n    return json.loads('{bad')\n"
    )
    path = write(tmp_path, "bad_json.py", "from loader_test_helper_json import parse\nparse()\n")
    message = load_error(path)
    assert "JSONDecodeError" in message
    assert f'File "{path}", line 2' in message
    assert 'loader_test_helper_json.py", line 4, in parse' in message
    assert "decoder.py" not in message
