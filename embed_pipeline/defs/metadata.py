"""Metadata a person reads at a glance in the Dagster UI: row counts and column schemas of tabular assets, counts
and curves as tables (rendered inline, sortable) rather than JSON text."""

from collections.abc import Mapping, Sequence

import dagster as dg
import numpy as np
import pandas as pd


def _column_type(frame: pd.DataFrame, column: str) -> str:
    """A reader's name for a column's type: pandas' dtype, or what an object column holds (text, list, ...)."""
    dtype = frame[column].dtype
    if not pd.api.types.is_object_dtype(dtype):
        return str(dtype)
    sample = frame[column].dropna()
    if sample.empty:
        return "object"
    value = sample.iloc[0]
    if isinstance(value, str):
        return "string"
    return f"list[{type(value[0]).__name__}]" if hasattr(value, "__len__") and len(value) else type(value).__name__


def frame_metadata(frame: pd.DataFrame) -> dict:
    """Dagster's standard row count and column schema of a table asset (shown on the asset's overview)."""
    return {
        "dagster/row_count": len(frame),
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(str(name), _column_type(frame, name)) for name in frame.columns]
        ),
    }


def count_table(counts: Mapping, key: str, value: str = "count") -> dg.TableMetadataValue:
    """A {label: number} mapping as a two-column table, largest first."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))
    return records_table([{key: str(k), value: v} for k, v in ordered])


def _cell(value):
    """A table cell: numbers (NumPy's as Python's), booleans and None as they are, anything else as text."""
    value = value.item() if isinstance(value, np.generic) else value
    return value if isinstance(value, bool | int | float | None) else str(value)


def records_table(records: Sequence[Mapping]) -> dg.TableMetadataValue:
    """Rows of equal keys (numbers or text) as a table; each column typed by its first value that is set."""
    if not records:
        return dg.MetadataValue.table([], dg.TableSchema(columns=[]))
    types = {bool: "bool", int: "int", float: "float"}
    first = {k: next((r[k] for r in records if r[k] is not None), None) for k in records[0]}
    schema = dg.TableSchema(columns=[dg.TableColumn(k, types.get(type(_cell(v)), "string")) for k, v in first.items()])
    rows = [dg.TableRecord({k: _cell(v) for k, v in r.items()}) for r in records]
    return dg.MetadataValue.table(rows, schema)
