"""The DuckDB sink's file: DCL_SINK_URL read into a path and a schema, the checks that a
path can be a database file at all, and the one mapping of DuckDB's exceptions
(``translate_duckdb``)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import duckdb

from aam_dcl.errors import AamDclError, ConfigError, SinkDataError, SinkUnavailable
from dcl_worker.sinks._merge import first_line
from dcl_worker.sinks._tenancy import url_schema

# A path that can never be a database file: ConfigError (exit 2), not a retry forever.
_BAD_PATH_ERRNOS = frozenset({errno.ENOTDIR, errno.EEXIST, errno.EACCES, errno.EPERM, errno.EROFS})

# Errors that say the store cannot be used right now, as opposed to rejecting the data.
_UNAVAILABLE = (
    duckdb.IOException,
    duckdb.OutOfMemoryException,
    duckdb.TransactionException,
    duckdb.FatalException,
    duckdb.InternalException,
    duckdb.ConnectionException,
)
_NOT_DUCKDB = "not a valid DuckDB database file"


def translate_duckdb(
    exc: Exception, path: str, what: str, *, opening: bool = False
) -> AamDclError | None:
    """Our error for a DuckDB (or file system) exception; None for any other exception.

    A file that is no DuckDB database, while opening it: ConfigError (the daemon exits 2).
    The file unusable now (I/O, a lock, memory, a broken database, a spool file that cannot
    be written), or anything else while opening it: SinkUnavailable, retried. Any other
    DuckDB error rejects the data: SinkDataError.
    """
    if not isinstance(exc, duckdb.Error | OSError):
        return None
    if opening and isinstance(exc, duckdb.IOException) and _NOT_DUCKDB in str(exc):
        return ConfigError(
            f"DCL_SINK_URL=duckdb://{path}: {first_line(exc)}; name another file (or move "
            "this one away)"
        )
    if opening or isinstance(exc, (*_UNAVAILABLE, OSError)):
        return SinkUnavailable(f"DuckDB file {path}: {what}: {exc}")
    return SinkDataError(f"DuckDB rejected the write: {what}: {exc}")


def parse_duckdb_url(url: str) -> tuple[str, str | None]:
    """(file path, the schema a trailing ``?schema=NAME`` names, or None: the tenant's).

    Everything else after ``duckdb://`` is the path (``:memory:`` for a throwaway store).
    """
    path = url.removeprefix("duckdb://")
    schema = None
    head, sep, query = path.rpartition("?schema=")
    if sep and head:
        path, schema = head, url_schema(query)
    if not path:
        raise ConfigError(
            f"DCL_SINK_URL={url!r} has no file path: use duckdb:///abs/dcl.duckdb "
            "or duckdb://./data/dcl.duckdb"
        )
    return path, schema


def check_path(name: str, *, create: bool = True) -> None:
    """ConfigError for a path that can never be a database file: a directory, or a place the
    worker cannot write. Creates the missing directories (not with ``create=False``: check()
    creates nothing, and asks the nearest existing one instead)."""
    path = Path(name)
    if path.is_dir():
        raise ConfigError(
            f"DCL_SINK_URL: the DuckDB path {name} is a directory; name a file in it, "
            f"e.g. duckdb://{path / 'dcl.duckdb'}"
        )
    if not create and not path.parent.exists():
        _check_ancestor(name, path.parent)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno not in _BAD_PATH_ERRNOS:
            raise SinkUnavailable(f"cannot create {path.parent}: {exc}") from exc
        raise ConfigError(
            f"DCL_SINK_URL: cannot create the directory of the DuckDB file {name}: "
            f"{exc.strerror}; choose a path the worker can write"
        ) from exc
    for target in (path.parent, path) if path.exists() else (path.parent,):
        if not os.access(target, os.W_OK):  # the spool files go next to the database too
            raise ConfigError(
                f"DCL_SINK_URL: the DuckDB path {name} is not writable ({target}); "
                "choose a path the worker can write"
            )


def _check_ancestor(name: str, directory: Path) -> None:
    """The nearest existing directory of a path to be created must be one the worker writes."""
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    if not directory.is_dir() or not os.access(directory, os.W_OK):
        raise ConfigError(
            f"DCL_SINK_URL: cannot create the DuckDB file {name}: {directory} is not a "
            "directory the worker can write; choose a path the worker can write"
        )
