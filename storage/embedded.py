"""The embedded PostgreSQL: a private server under the daemon's state directory.

With no DSN configured the daemon must still have a real PostgreSQL (the whole design relies on
its transactions, LISTEN/NOTIFY and SKIP LOCKED), so it runs one itself, from the Debian
`postgresql` package's binaries. The test session uses the same launcher with durability off.

These functions are synchronous on purpose: they run subprocesses (initdb, pg_ctl, psql) and are
called once at start-up, from a worker thread in the daemon and directly from pytest.

PostgreSQL refuses to run as root, so as root every server command runs as the `postgres` system
user through `runuser`, and the directories it writes are handed to that user. The server listens
on a unix socket only (no TCP): nothing outside this machine can reach it, and `trust`
authentication is confined to whoever can enter the socket directory.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pwd
import shlex
import shutil
import stat
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from storage.errors import EmbeddedPostgresError

PG_INSTALL_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "postgres"
DEFAULT_DATABASE = "orchestrator"
#: sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
_LOG_TAIL_LINES = 40
_START_TIMEOUT_SECONDS = 60


def find_pg_bin_dir(root: Path = PG_INSTALL_ROOT) -> Path:
    """The `bin` directory of the newest PostgreSQL installed under `root` (e.g. .../15/bin)."""
    candidates: list[tuple[tuple[int, ...], Path]] = []
    if root.is_dir():
        for child in root.iterdir():
            bin_dir = child / "bin"
            if not ((bin_dir / "initdb").is_file() and (bin_dir / "pg_ctl").is_file()):
                continue
            try:
                version = tuple(int(part) for part in child.name.split("."))
            except ValueError:
                continue
            candidates.append((version, bin_dir))
    if not candidates:
        raise EmbeddedPostgresError(
            f"PostgreSQL server binaries not found under {root}: install the `postgresql` package "
            "(apt-get install postgresql) or set database.dsn"
        )
    return max(candidates)[1]


def socket_path_fits(socket_dir: Path, port: int) -> bool:
    """Whether the socket file `<socket_dir>/.s.PGSQL.<port>` fits in a unix socket address."""
    return len(os.fsencode(socket_dir / f".s.PGSQL.{port}")) <= MAX_SOCKET_PATH


def _closed_parent(directory: Path, user: pwd.struct_passwd) -> Path | None:
    """The first existing parent of `directory` that `user` cannot enter (None: all open)."""
    gids = os.getgrouplist(user.pw_name, user.pw_gid)
    for parent in directory.parents:
        if parent.exists() and not _can_traverse(parent, user.pw_uid, gids):
            return parent
    return None


def _can_traverse(path: Path, uid: int, gids: Sequence[int]) -> bool:
    st = path.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


#: where the embedded cluster goes when the state directory is out of the `postgres` user's reach
SYSTEM_DATA_ROOT = Path("/var/lib/orchestrator")


def embedded_data_dir(state_dir: Path, system_root: Path = SYSTEM_DATA_ROOT) -> Path:
    """Where the embedded PostgreSQL of `state_dir` lives: `<state_dir>/postgres`, unless the
    daemon runs as root and the `postgres` user cannot reach it (a clone in root's 0700 home
    directory, the usual case in a container or a fresh VM). Then it is
    `<system_root>/postgres-<hash of state_dir>`: the same place on every start, one per state
    directory. A cluster already initialised under the state directory stays there."""
    state_dir = state_dir.absolute()
    preferred = state_dir / "postgres"
    if os.geteuid() != 0 or (preferred / "pgdata" / "PG_VERSION").is_file():
        return preferred
    try:
        user = pwd.getpwnam(SUPERUSER)
    except KeyError:
        return preferred  # ensure_started says that the user is missing
    if _closed_parent(preferred, user) is None:
        return preferred
    digest = hashlib.sha256(os.fsencode(state_dir)).hexdigest()[:16]
    return system_root / f"postgres-{digest}"


@dataclass(frozen=True)
class EmbeddedPostgres:
    """A private PostgreSQL server whose files live under `data_dir`.

    `data_dir` holds `pgdata/` (the cluster), `postgres.log` (the server log) and, when the path
    is short enough, `sock/` (the unix socket directory).
    """

    data_dir: Path
    #: False for tests: fsync, synchronous_commit and full_page_writes off (fast, not crash-safe)
    durable: bool = True
    #: only names the unix socket file (.s.PGSQL.<port>); the server opens no TCP port
    port: int = 5432

    # --- paths ----------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return self.data_dir.absolute()

    @property
    def pgdata(self) -> Path:
        return self.root / "pgdata"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        """`<data_dir>/sock`, or a short directory under /tmp when that path is too long for a socket."""
        preferred = self.root / "sock"
        if socket_path_fits(preferred, self.port):
            return preferred
        digest = hashlib.sha256(os.fsencode(self.root)).hexdigest()[:16]
        return Path("/tmp") / f"orchestrator-pg-{digest}"

    def dsn(self, database: str = DEFAULT_DATABASE) -> str:
        """An asyncpg/libpq DSN reaching `database` on this server over its unix socket."""
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql://{SUPERUSER}@/{quote(database, safe='')}?host={host}&port={self.port}"

    # --- lifecycle ------------------------------------------------------------------------
    def ensure_started(self) -> str:
        """Initialise the cluster if needed, start the server unless it already runs (e.g. left
        behind by a daemon that was killed), create the `orchestrator` database if missing, and
        return its DSN."""
        bin_dir = find_pg_bin_dir()
        self._prepare_directories()
        with self._locked():
            if not self._is_initialised():
                self._initdb(bin_dir)
            if self._is_running(bin_dir) and not self._socket_file().exists():
                # Running with another socket directory or port than we were asked for: restart it
                # with ours rather than hand out a DSN that reaches nothing.
                self._pg_ctl_stop(bin_dir)
            if not self._is_running(bin_dir):
                self._start(bin_dir)
            self._ensure_database(bin_dir, DEFAULT_DATABASE)
        return self.dsn()

    def stop(self) -> None:
        """Stop the server (fast shutdown: sessions are disconnected) if it is running."""
        if not self._is_initialised():
            return
        bin_dir = find_pg_bin_dir()
        with self._locked():
            if self._is_running(bin_dir):
                self._pg_ctl_stop(bin_dir)

    def is_running(self) -> bool:
        """Whether a server is running on this data directory."""
        return self._is_initialised() and self._is_running(find_pg_bin_dir())

    # --- internals ------------------------------------------------------------------------
    def _socket_file(self) -> Path:
        return self.socket_dir / f".s.PGSQL.{self.port}"

    def _is_initialised(self) -> bool:
        return (self.pgdata / "PG_VERSION").is_file()

    def _server_user(self) -> pwd.struct_passwd | None:
        """The account the server runs as when we are root; None when we run it as ourselves."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(SUPERUSER)
        except KeyError:
            raise EmbeddedPostgresError(
                "PostgreSQL refuses to run as root and there is no `postgres` system user to run it "
                "as: install the `postgresql` package (it creates the user) or set database.dsn"
            ) from None

    def _prepare_directories(self) -> None:
        user = self._server_user()
        if user is not None and not self.root.parent.exists():
            # e.g. SYSTEM_DATA_ROOT: a folder the server user can enter, holding only clusters
            self.root.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if user is None:
            self.socket_dir.chmod(0o700)
            return
        for directory in (self.root, self.socket_dir):
            parent = _closed_parent(directory, user)
            if parent is not None:
                raise EmbeddedPostgresError(
                    f"The `postgres` user cannot enter {parent} (mode "
                    f"{stat.filemode(parent.stat().st_mode)}), which the embedded PostgreSQL "
                    f"needs to reach {directory}. PostgreSQL refuses to run as root, so it runs "
                    f"as `postgres`: run `chmod o+x {parent}`, or choose a state directory "
                    "outside it, or set database.dsn"
                )
        for directory in (self.root, self.socket_dir):
            os.chown(directory, user.pw_uid, user.pw_gid)
        self.socket_dir.chmod(0o700)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise start/stop of one data directory across processes (two daemons starting)."""
        with open(self.root / "embedded.lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _as_server_user(self, argv: Sequence[str]) -> list[str]:
        if self._server_user() is None:
            return list(argv)
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        return [runuser, "-u", SUPERUSER, "--", *argv]

    def _run(self, argv: Sequence[str], *, as_server: bool = True) -> subprocess.CompletedProcess[str]:
        command = self._as_server_user(argv) if as_server else list(argv)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        try:
            return subprocess.run(
                command, cwd=self.root, env=env, capture_output=True, text=True, check=False
            )
        except OSError as exc:
            raise EmbeddedPostgresError(f"Could not run {command[0]}: {exc}") from exc

    def _initdb(self, bin_dir: Path) -> None:
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise EmbeddedPostgresError(
                f"{self.pgdata} exists but holds no PostgreSQL cluster (no PG_VERSION file), perhaps "
                "from an interrupted first start: remove that directory and start again"
            )
        argv = [str(bin_dir / "initdb"), "-D", str(self.pgdata), "-A", "trust", "-U", SUPERUSER]
        argv += ["-E", "UTF8", "--locale=C"]
        if not self.durable:
            argv.append("--no-sync")
        result = self._run(argv)
        if result.returncode != 0:
            raise EmbeddedPostgresError(
                f"initdb failed for {self.pgdata} (exit {result.returncode}):\n{result.stderr.strip()}\n"
                "Fix the cause above (disk space, permissions), remove the directory and start again"
            )

    def _is_running(self, bin_dir: Path) -> bool:
        # pg_ctl status: 0 running, 3 not running, 4 no accessible data directory.
        result = self._run([str(bin_dir / "pg_ctl"), "status", "-D", str(self.pgdata)])
        return result.returncode == 0

    def _server_options(self) -> list[str]:
        options = ["-c", "listen_addresses=", "-k", str(self.socket_dir), "-p", str(self.port)]
        if not self.durable:
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        return options

    def _start(self, bin_dir: Path) -> None:
        user = self._server_user()
        if user is not None and self.log_file.exists():
            # pg_ctl opens the log as the server user; a log left by an earlier run as root would block it.
            os.chown(self.log_file, user.pw_uid, user.pw_gid)
        argv = [str(bin_dir / "pg_ctl"), "start", "-w", "-t", str(_START_TIMEOUT_SECONDS)]
        argv += ["-D", str(self.pgdata), "-l", str(self.log_file)]
        # pg_ctl hands -o to a shell, so each option is quoted.
        argv += ["-o", " ".join(shlex.quote(option) for option in self._server_options())]
        result = self._run(argv)
        if result.returncode != 0:
            raise EmbeddedPostgresError(
                f"The embedded PostgreSQL did not start (pg_ctl exit {result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}\n"
                f"Last lines of {self.log_file}:\n{self._log_tail()}"
            )

    def _pg_ctl_stop(self, bin_dir: Path) -> None:
        result = self._run([str(bin_dir / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(self.pgdata)])
        if result.returncode != 0 and self._is_running(bin_dir):
            raise EmbeddedPostgresError(
                f"Could not stop the embedded PostgreSQL in {self.pgdata}: {result.stderr.strip()}\n"
                f"Last lines of {self.log_file}:\n{self._log_tail()}"
            )

    def _log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"(could not read the log: {exc})"
        return "\n".join(lines[-_LOG_TAIL_LINES:])

    def _psql(self, bin_dir: Path, sql: str) -> subprocess.CompletedProcess[str]:
        argv = [str(bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        argv += ["-h", str(self.socket_dir), "-p", str(self.port), "-U", SUPERUSER, "-d", "postgres"]
        argv += ["-c", sql]
        return self._run(argv, as_server=False)

    def _ensure_database(self, bin_dir: Path, database: str) -> None:
        exists_sql = "SELECT 1 FROM pg_database WHERE datname = " + _sql_literal(database)
        if self._psql(bin_dir, exists_sql).stdout.strip() == "1":
            return
        created = self._psql(bin_dir, "CREATE DATABASE " + _sql_identifier(database))
        if created.returncode != 0 and self._psql(bin_dir, exists_sql).stdout.strip() != "1":
            raise EmbeddedPostgresError(
                f"Could not create database {database!r} in the embedded PostgreSQL: "
                f"{created.stderr.strip()}\nLast lines of {self.log_file}:\n{self._log_tail()}"
            )


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_identifier(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'
