"""Materialization metadata the assets and the IO manager share: tables as markdown, schemas.

Figures go into metadata as markdown images (:func:`kp_science.figures.markdown_image` of
:func:`kp_science.figures.figure_png`); tables as markdown (:func:`markdown_table`); every
warehouse table's row count, column schema and preview as :func:`table_metadata` gives them.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
import pandas as pd


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table of ``df`` (uses ``tabulate`` when installed)."""
    try:
        return df.to_markdown()
    except ImportError:
        pass

    # Hand-rolled fallback so previews never add a dependency.
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = ["", *(cell(c) for c in df.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for idx, row in df.iterrows():
        lines.append("| " + " | ".join([cell(idx), *(cell(v) for v in row)]) + " |")
    return "\n".join(lines)


def table_schema(df: pd.DataFrame) -> dg.TableSchema:
    """A ``dg.TableSchema`` with one column per dataframe column, typed by its dtype."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name=str(name), type=str(dtype)) for name, dtype in df.dtypes.items()
        ]
    )


def table_metadata(df: pd.DataFrame) -> dict[str, Any]:
    """Row count, column schema and a 10-row markdown preview of a table's materialization."""
    return {
        "dagster/row_count": dg.MetadataValue.int(len(df)),
        "dagster/column_schema": dg.MetadataValue.table_schema(table_schema(df)),
        "preview": dg.MetadataValue.md(markdown_table(df.head(10))),
    }
