"""SQL over manifests with DuckDB; the only module importing duckdb and pandas.

Parts are read through castore's Location (any fsspec backend, no DuckDB extension or
credentials of its own) and registered as Arrow tables, so a query sees exactly the
checkpoints castore sees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from castore.errors import QueryError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["concat_summaries", "run_query"]


def concat_summaries(tables: list[pa.Table]) -> pa.Table:
    """One table from per-part rows whose metric columns differ (missing ones become null)."""
    if not tables:
        return pa.table({"run": pa.array([], pa.string()), "epoch": pa.array([], pa.int64())})
    return pa.concat_tables(tables, promote_options="permissive")


def run_query(sql: str, views: dict[str, pa.Table]) -> pd.DataFrame:
    """Run ``sql`` with each of ``views`` registered under its name; return a DataFrame."""
    try:
        import duckdb
    except ImportError as exc:
        raise QueryError("queries need DuckDB: pip install 'castore[query]'") from exc

    connection = duckdb.connect()
    try:
        for name, table in views.items():
            connection.register(name, table)
        try:
            return connection.execute(sql).df()
        except duckdb.Error as exc:
            raise QueryError(f"query failed: {exc}") from exc
    finally:
        connection.close()
