"""Run a bash command without bash when bash would only exec it.

`bash -c 'true'` or `bash -c 'python3 job.py --day 2026-01-01'` makes bash start (about 0.5 ms
here), parse one simple command and exec the program in place. When a command has no shell
syntax at all (no quoting, expansion, redirection, globbing, separators, assignments or
comments) and names a program rather than a shell builtin, exec'ing the program directly
gives the same process, arguments, environment and exit status, at half the spawn cost.
Anything else, or anything in doubt, goes through `bash -c` as Airflow's BashOperator does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

# letters, digits and punctuation that bash gives no meaning to, separated by spaces or tabs
_PLAIN_COMMAND = re.compile(r"[A-Za-z0-9_./:,@%+=-]+(?:[ \t]+[A-Za-z0-9_./:,@%+=-]+)*")

#: bash builtins and keywords: a program of the same name may behave differently (echo, test,
#: printf, kill, pwd, ...) or the builtin changes the shell itself (cd, export, exec, ...).
#: `true` and `false` are the exception: the programs are exactly the builtins.
_BASH_BUILTINS = frozenset(
    """
    alias bg bind break builtin caller case cd command compgen complete compopt continue coproc
    declare dirs disown do done echo elif else enable esac eval exec exit export fc fg fi for
    function getopts hash help history if in jobs kill let local logout mapfile popd printf pushd
    pwd read readarray readonly return select set shift shopt source suspend test then time times
    trap type typeset ulimit umask unalias unset until wait while [ [[ ]] { } ! .
    """.split()
)

_resolved: dict[tuple[str, str], str] = {}


def direct_argv(command: str, env: Mapping[str, str]) -> list[str] | None:
    """The argv to exec instead of `bash -c command`, or None when bash is needed."""
    stripped = command.strip(" \t")
    if not _PLAIN_COMMAND.fullmatch(stripped):
        return None
    words = stripped.split()
    program = words[0]
    if "=" in program or program in _BASH_BUILTINS:
        return None
    path = _resolve(program, env.get("PATH", os.defpath))
    return [path, *words[1:]] if path is not None else None


def _resolve(program: str, search_path: str) -> str | None:
    """Where bash would find `program` on PATH (only executable regular files; cached)."""
    if "/" in program:
        return program if _is_executable(program) else None
    key = (program, search_path)
    found = _resolved.get(key)
    if found is not None:
        # trusted without a new stat: if the program has gone since, posix_spawn says so
        return found
    for directory in search_path.split(os.pathsep):
        candidate = os.path.join(directory or ".", program)
        if _is_executable(candidate):
            if directory and os.path.isabs(directory):
                _resolved[key] = candidate
            return candidate
    return None


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)
