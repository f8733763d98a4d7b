"""A PostgreSQL server for integration tests: PG_TEST_DSN, else 127.0.0.1:5432, else a throwaway
cluster started with initdb/pg_ctl; skipped (with the reason printed) when none is possible."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _reachable(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (root / name).exists():
            return str(root / name)
    return None


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextmanager
def throwaway_cluster() -> Iterator[str]:
    from app.local_llm import free_port

    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise RuntimeError("no PostgreSQL reachable and initdb/pg_ctl are not installed")
    tmp = Path(tempfile.mkdtemp(prefix="mkt-pg-"))
    port = free_port()
    user = "postgres"
    # initdb refuses to run as root: then run the cluster as an unprivileged system user
    prefix: list[str] = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        owner = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
        if runuser is None or owner is None:
            raise RuntimeError("running as root and no unprivileged user to run initdb as")
        prefix = [runuser, "-u", owner, "--"]
        shutil.chown(tmp, user=owner)
    data, log = str(tmp / "data"), str(tmp / "log")
    opts = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*prefix, initdb, "-D", data, "-U", user, "-A", "trust", "--no-sync"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*prefix, pg_ctl, "-D", data, "-l", log, "-w", "-o", opts, "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://{user}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def server_dsn() -> Iterator[str]:
    dsn = os.environ.get("PG_TEST_DSN", DEFAULT_DSN)
    if _reachable(dsn):
        yield dsn
        return
    with throwaway_cluster() as started:
        yield started


@contextmanager
def fresh_database(admin_dsn: str) -> Iterator[str]:
    """A new empty database for one test, dropped afterwards."""
    name = f"mkt_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
