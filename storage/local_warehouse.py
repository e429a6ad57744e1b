"""A local warehouse: Parquet run dates, each replaced by one rename, and a DuckDB file whose
tables are views over them.

The layout under ``root`` (``{file}_parquet/`` beside the DuckDB file)::

    _versions/run_date=D/vN/TABLE/*-vN.parquet      the rows of date D of every table, version N
    _dates/run_date=D -> ../_versions/run_date=D/vN  the published version of date D
    _dates/schema/TABLE/TABLE.parquet               no rows: the columns of TABLE
    TABLE/run_date=D -> ../_dates/run_date=D/TABLE  the partition readers glob

The DuckDB file holds no rows: table ``TABLE`` is a view over ``_dates/*/TABLE/*.parquet``, so
DuckDB and the Parquet partitions read the same files. A publish builds version N+1 of the date
whole beside the published one, then replaces the symlink ``_dates/run_date=D`` with one
``os.replace`` (rename(2), atomic on a local POSIX file system). That one step publishes every
table of the date at once, in DuckDB and in Parquet; the old version is deleted after it. A
publish killed anywhere leaves the old or the new version published, whole; what else it leaves
(an unpublished version, a temporary link, a partition link to nothing) the next publish
deletes. Publishes hold the DuckDB file's write lock, so one runs at a time. A file's name
carries its version, so a query that lists a date's files before a swap and opens them after
fails (file not found) instead of mixing two versions.

Object stores (gs://) have neither symlinks nor an atomic rename. A DuckDB warehouse, and so
this folder, is always on local disk (``pipelines.checks`` refuses a gs:// one); on GCP the
warehouse is BigQuery, where one transaction swaps a date (:mod:`storage.bigquery`).
"""

from __future__ import annotations

import datetime
import glob
import os
import pathlib
import re
import shutil
from collections.abc import Mapping

import duckdb

from schemas import ALL_TABLES
from schemas import CandidateRow
from schemas import Record
from storage.files import parquet_encoder
from storage.shrink import Counts
from storage.shrink import ShrinkGuard

VERSIONS = "_versions"
DATES = "_dates"
SCHEMA = "schema"
"""``_dates/schema/`` sorts after the dates: DuckDB scans more slowly when a view's first file is
empty."""
LEGACY_PENDING = "_pending_partitions"
"""A table of the earlier layout, which copied the rows into DuckDB; its first publish drops it."""

_VERSION = re.compile(r"v(\d+)")
_VERSION_SUFFIX = re.compile(r"(-v\d+)?\.parquet$")
_TABLES = {table.TABLE: table for table in ALL_TABLES}


def date_folder(run_date: datetime.date) -> str:
    """The folder name of a run date: ``run_date=YYYY-MM-DD``."""
    return f"run_date={run_date.isoformat()}"


def partition_dir(root: str, table: str, run_date: datetime.date) -> str:
    """The published Parquet folder of one table's run date (a link to its current version)."""
    return os.path.join(root, table, date_folder(run_date))


def publish_date(
    database: str, root: str, staged: Mapping[type[Record], str], run_date: datetime.date,
    guard: ShrinkGuard | None = None,
) -> dict[str, int]:  # fmt: skip
    """Replace ``run_date`` of each table in ``staged`` (table -> folder of its staged Parquet)
    with the staged files in one step, keeping the date's other tables; return the rows now
    held per staged table. With ``guard``, staged candidates are first compared with the latest
    published date's (:mod:`storage.shrink`): a refusal changes nothing."""
    root = os.path.abspath(root)
    os.makedirs(os.path.dirname(database) or ".", exist_ok=True)
    with duckdb.connect(database) as con:  # the file's write lock: one publish at a time
        counts = {t.TABLE: _check_staged(con, t, f, run_date) for t, f in staged.items()}
        if guard is not None and CandidateRow in staged:
            files = os.path.join(staged[CandidateRow], "*.parquet")
            previous = _latest_candidates(con, root, run_date)
            guard.check(run_date, _candidate_counts(con, files), *previous)
        _tidy(root)
        _adopt_legacy_partitions(root)
        for table in staged:
            _write_schema(root, table)
        _define_views(con, root)
        incoming = {table.TABLE: folder for table, folder in staged.items()}
        _replace_date(root, date_folder(run_date), incoming, move=True)
    return counts


def _candidate_counts(con, files: str) -> Counts:
    rows, users = con.execute(
        f"SELECT count(*), count(DISTINCT {CandidateRow.c.user_id})"
        " FROM read_parquet(?, hive_partitioning = false)", [files],
    ).fetchone()  # fmt: skip
    return Counts(int(rows), int(users))


def _latest_candidates(
    con, root: str, run_date: datetime.date
) -> tuple[datetime.date | None, Counts | None]:
    """The latest published date on or before ``run_date`` that has candidates, and theirs."""
    dates = []
    for link in glob.glob(os.path.join(root, DATES, "run_date=*")):
        date = datetime.date.fromisoformat(os.path.basename(link).split("=", 1)[1])
        if date <= run_date and _listdir(os.path.join(link, CandidateRow.TABLE)):
            dates.append(date)
    if not dates:
        return None, None
    latest = max(dates)
    files = os.path.join(root, DATES, date_folder(latest), CandidateRow.TABLE, "*.parquet")
    return latest, _candidate_counts(con, files)


def clear_unpublished(database: str, root: str) -> list[str]:
    """Delete what a killed publish left beside the published dates; return the paths."""
    if not os.path.exists(database):
        return []
    with duckdb.connect(database):  # the file's write lock: no publish runs meanwhile
        return _tidy(os.path.abspath(root))


def _check_staged(con, table: type[Record], folder: str, run_date: datetime.date) -> int:
    """The rows of a table's staged files, which must all be of ``run_date``."""
    files = sorted(glob.glob(os.path.join(folder, "*.parquet")))
    if not files:
        raise FileNotFoundError(f"{folder}: no staged {table.TABLE} files for {run_date}")
    rows, others = con.execute(
        f"SELECT count(*), count(*) FILTER (WHERE {table.c.run_date} IS DISTINCT FROM ?)"
        " FROM read_parquet(?, hive_partitioning = false)", [run_date, files],
    ).fetchone()  # fmt: skip
    if others:
        raise ValueError(f"{folder}: {others} of {rows} {table.TABLE} rows are not of {run_date}")
    return rows


def _replace_date(root: str, date: str, incoming: Mapping[str, str], move: bool) -> None:
    """Publish a new version of a date: ``incoming`` (table -> folder, moved in or hard-linked)
    and the published version's other tables; then delete the old version."""
    published = _published(root, date)
    folder = os.path.join(root, VERSIONS, date)
    taken = [int(m[1]) for n in _listdir(folder) if (m := _VERSION.fullmatch(n))]
    version = os.path.join(folder, f"v{max(taken, default=0) + 1:04d}")
    for name, files in incoming.items():
        (_move_files if move else _link_files)(files, os.path.join(version, name))
    if published:
        for name in sorted(set(os.listdir(published)) - set(incoming)):
            _link_files(os.path.join(published, name), os.path.join(version, name))
    for name in sorted(os.listdir(version)):
        _link_partition(root, name, date)
    link = version + ".link"
    os.symlink(os.path.relpath(version, os.path.join(root, DATES)), link)
    os.makedirs(os.path.join(root, DATES), exist_ok=True)
    os.replace(link, os.path.join(root, DATES, date))  # the one step that publishes the date
    if published:
        shutil.rmtree(published)


def _published(root: str, date: str) -> str | None:
    """The folder of a date's published version, if it has one."""
    link = os.path.join(root, DATES, date)
    if not os.path.islink(link):
        return None
    return os.path.join(root, VERSIONS, date, os.path.basename(os.readlink(link)))


def _listdir(folder: str) -> list[str]:
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def _versioned(name: str, dest: str) -> str:
    """A file's name in the version folder ``dest`` (``.../v0003/neighbors``) is
    ``neighbors-00000-of-00001-v0003.parquet``."""
    version = os.path.basename(os.path.dirname(dest))
    return _VERSION_SUFFIX.sub(f"-{version}.parquet", name, count=1)


def _move_files(folder: str, dest: str) -> None:
    """Move a folder of files to ``dest``, each file renamed for its version."""
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    os.rename(folder, dest)
    for name in os.listdir(dest):
        os.rename(os.path.join(dest, name), os.path.join(dest, _versioned(name, dest)))


def _link_files(folder: str, dest: str) -> None:
    """Hard-link (else copy) a folder's files into ``dest``, each renamed for its version."""
    os.makedirs(dest)
    for name in os.listdir(folder):
        source, target = os.path.join(folder, name), os.path.join(dest, _versioned(name, dest))
        try:
            os.link(source, target)
        except OSError:  # a file system without hard links
            shutil.copyfile(source, target)


def _link_partition(root: str, table: str, date: str) -> None:
    """The link ``TABLE/run_date=D`` readers glob (made once, before the date is published)."""
    path = os.path.join(root, table, date)
    if not os.path.lexists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.symlink(os.path.join(os.pardir, DATES, date, table), path)


def _write_schema(root: str, table: type[Record]) -> None:
    """The table's empty Parquet file, so that its view has a file to read before any date."""
    path = pathlib.Path(root, DATES, SCHEMA, table.TABLE, f"{table.TABLE}.parquet")
    data = parquet_encoder(table)([])
    if path.exists() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_bytes(data)
    os.replace(path.with_suffix(".tmp"), path)


def _define_views(con, root: str) -> None:
    """Each table with a schema file becomes a view over its published dates (one transaction,
    which also drops the tables of the earlier layout)."""
    kinds = dict(con.execute("SELECT table_name, table_type FROM information_schema.tables"
                             " WHERE table_schema = 'main'").fetchall())  # fmt: skip
    con.execute("BEGIN TRANSACTION")
    for name in _listdir(os.path.join(root, DATES, SCHEMA)):
        if kinds.get(name) == "BASE TABLE":
            con.execute(f"DROP TABLE {name}")
        files = os.path.join(root, DATES, "*", name, "*.parquet").replace("'", "''")
        con.execute(
            f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet('{files}',"
            " hive_partitioning = false, union_by_name = true)"
        )
    con.execute(f"DROP TABLE IF EXISTS {LEGACY_PENDING}")
    con.execute("COMMIT")


def _tidy(root: str) -> list[str]:
    """Delete every version no date points at and every partition link to nothing, and link
    each published table's partition; return the paths deleted."""
    removed = []
    for folder in sorted(glob.glob(os.path.join(root, VERSIONS, "run_date=*"))):
        date = os.path.basename(folder)
        published = _published(root, date)
        for name in _listdir(folder):
            path = os.path.join(folder, name)
            if not published or name != os.path.basename(published):
                removed.append(path)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
        if published:
            for name in _listdir(published):
                _link_partition(root, name, date)
        elif not os.listdir(folder):
            os.rmdir(folder)
    for link in sorted(glob.glob(os.path.join(root, "[!_]*", "run_date=*"))):
        if os.path.islink(link) and not os.path.exists(link):
            os.unlink(link)
            removed.append(link)
    return removed


def _adopt_legacy_partitions(root: str) -> None:
    """Turn the partition folders of the earlier layout (``TABLE/run_date=D/`` holding the files)
    into published versions, once. Only here is a partition briefly missing: between moving the
    folder aside and putting the link in its place."""
    legacy: dict[str, dict[str, str]] = {}
    for path in sorted(glob.glob(os.path.join(root, "[!_]*", "run_date=*"))):
        if os.path.isdir(path) and not os.path.islink(path):
            table = os.path.basename(os.path.dirname(path))
            legacy.setdefault(os.path.basename(path), {})[table] = path
    for date, folders in legacy.items():
        for table in folders:
            _write_schema(root, _TABLES[table])
        _replace_date(root, date, folders, move=False)
        for table, path in folders.items():
            aside = os.path.join(root, VERSIONS, date, f"legacy-{table}")
            os.rename(path, aside)
            _link_partition(root, table, date)
            shutil.rmtree(aside)
