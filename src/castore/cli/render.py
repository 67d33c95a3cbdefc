"""Printing for the ``castore`` command: aligned tables for people, JSON for scripts.

Commands build rows as dicts of machine values (byte counts as ints, floats as floats);
this module turns them into text. A column whose key ends in ``bytes`` is shown as a
human size ("12.3 MiB") in tables and stays a raw int in JSON.
"""

from __future__ import annotations

import json
import math
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "BYTE_COLUMNS",
    "Column",
    "format_checkpoint",
    "format_error",
    "format_fields",
    "format_table",
    "format_value",
    "human_bytes",
    "to_json",
]

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_MISSING = "-"
_EXACT_FLOAT = 2.0**53

Column = tuple[str, str]
"""A table column: the row key it shows (``a.b`` reaches into a nested dict), its header."""

BYTE_COLUMNS: list[Column] = [
    ("logical_bytes", "logical"),
    ("new_bytes", "new"),
    ("stored_bytes", "stored"),
]


def human_bytes(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``: binary units, one decimal above a KiB."""
    size = float(n)
    for unit in _BYTE_UNITS[:-1]:
        if abs(size) < 1024:
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} {_BYTE_UNITS[-1]}"


def format_value(key: str, value: object) -> str:
    """One table cell: sizes humanised, whole floats as integers, other floats to 6
    significant digits, nulls as '-'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _MISSING
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer() and abs(value) < _EXACT_FLOAT:
        value = int(value)
    if isinstance(value, int) and key.endswith("bytes"):
        return human_bytes(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def format_table(rows: Sequence[Mapping[str, object]], columns: Sequence[Column]) -> str:
    """Rows under a header, padded to align; numeric columns are right-aligned."""
    values = [[_lookup(row, key) for key, _ in columns] for row in rows]
    cells = [
        [format_value(key, v) for (key, _), v in zip(columns, line, strict=True)] for line in values
    ]
    right = [
        all(isinstance(line[i], int | float | type(None)) for line in values)
        for i in range(len(columns))
    ]
    headers = [header for _, header in columns]
    widths = [
        max([len(header)] + [len(line[i]) for line in cells]) for i, header in enumerate(headers)
    ]

    def join(texts: Sequence[str]) -> str:
        padded = [
            text.rjust(width) if align else text.ljust(width)
            for text, width, align in zip(texts, widths, right, strict=True)
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([join(headers), *(join(texts) for texts in cells)])


def format_fields(fields: Sequence[tuple[str, str]]) -> str:
    """``name  value`` lines with the values aligned."""
    width = max(len(name) for name, _ in fields)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in fields)


def format_checkpoint(shown: Mapping[str, Any]) -> str:
    """``castore show``: the checkpoint's fields, then a table of its tensors."""
    metrics = " ".join(f"{k}={format_value(k, v)}" for k, v in shown["metrics"].items())
    fields = [("run", "run"), ("epoch", "epoch"), ("step", "step"), ("parent_epoch", "parent")]
    header = [(label, format_value(key, shown[key])) for key, label in fields]
    header.append(("created", format_value("created_at", shown["created_at"])))
    header.append(("metrics", metrics or _MISSING))
    header += [(label, format_value(key, shown[key])) for key, label in BYTE_COLUMNS]
    if shown["pickled"]:
        objects = ", ".join(f"{o['path']} ({o['class']})" for o in shown["pickled"])
        header.append(("pickled", f"{objects}: loading needs trust=True"))
    columns = [(key, key) for key in ("name", "dtype", "shape", "bytes", "chunks", "status")]
    text = [format_fields(header), "", format_table(shown["tensors"], columns)]
    if shown["storage_entries"]:
        text.append(f"({shown['storage_entries']} storage entries behind views not listed)")
    return "\n".join(text)


def _lookup(row: Mapping[str, object], key: str) -> object:
    """``row[key]``, or for a dotted key absent from ``row`` the nested ``row[a][b]``."""
    if key in row or "." not in key:
        return row.get(key)
    outer, inner = key.split(".", 1)
    nested = row.get(outer)
    return nested.get(inner) if isinstance(nested, dict) else None


def to_json(value: object, *, indent: int | None = 2) -> str:
    """Strict JSON (NaN becomes null, times ISO 8601), indented for reading and diffing;
    ``indent=None`` gives one line, for JSON-lines streams."""
    return json.dumps(_jsonable(value), indent=indent, allow_nan=False)


def _jsonable(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def format_error(exc: BaseException) -> str:
    """The exception and its notes on one line, for ``castore: error: ...``.

    Multi-line messages (DuckDB's, with a caret under the bad token) are joined, and
    the caret marks dropped: they point at nothing once on one line.
    """
    texts = [str(exc), *getattr(exc, "__notes__", ())]
    return "; ".join(line for line in map(_one_line, texts) if line)


def _one_line(text: str) -> str:
    return " ".join(word for word in text.split() if word.strip("^"))
