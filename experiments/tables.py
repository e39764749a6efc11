"""Results tables in the replication's format: one row per model, one column per attack of the registry,
a +- (the 95% interval's half-width, widened to cover it) on every figure; Markdown, merged as runs finish,
and the same rows as CSV.

A row's Setting (dataset, eps, images) and the attacks it ran are part of its identity: a run replaces the row
of an earlier run only where label, setting and attacks all agree, so a run on another dataset, eps or attack
list adds a row instead of silently replacing one."""

import csv
import io
from collections.abc import Iterable, Sequence

from kwta.attacks import ATTACK_COLUMNS
from kwta.evaluation import plus_minus

TABLE_COLUMNS = ("Activation", "Setting", "A_std", *ATTACK_COLUMNS.values(), "Worst case")
_TABLE_KEYS = {"A_std": "clean", **{column: name for name, column in ATTACK_COLUMNS.items()},
               "Worst case": "worst_case"}
_ATTACK_CELLS = slice(3, len(TABLE_COLUMNS) - 1)
NOT_RUN = "-"
PLUS_MINUS = " +- "


def setting(dataset: str, eps: float, n_images: int) -> str:
    """A row's Setting cell: what its figures depend on besides the model and the attacks."""
    return f"{dataset}, eps {eps:g}, {n_images} images"


def table_row(label: str, accuracy: dict[str, float], intervals: dict[str, Sequence[float]] | None = None,
              where: str = NOT_RUN) -> list[str]:
    """One row over every TABLE_COLUMNS: `accuracy` maps clean / attack names / worst_case to fractions,
    `intervals` the same keys to (low, high); a figure shows as '12.50% +- 4.07'; missing attacks show '-'.
    where: the Setting cell (`setting`)."""
    cells = []
    for key in _TABLE_KEYS.values():
        if key not in accuracy:
            cells.append(NOT_RUN)
        elif intervals and key in intervals:
            cells.append(f"{accuracy[key]:.2%}{PLUS_MINUS}{100 * plus_minus(accuracy[key], intervals[key]):.2f}")
        else:
            cells.append(f"{accuracy[key]:.2%}")
    return [label, where, *cells]


def parse_table(markdown: str) -> list[list[str]]:
    """Rows (without header, over every TABLE_COLUMNS) of a table `format_table` wrote; '' is an empty table.

    The header may hold any of TABLE_COLUMNS in any order (format_table leaves out attacks no row ran;
    older tables had fewer columns): columns it lacks read as not run.
    """
    lines = [line.strip() for line in markdown.splitlines() if line.strip().startswith("|")]
    if not lines:
        return []
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    known = set(header) <= set(TABLE_COLUMNS) and len(set(header)) == len(header)
    if not known or header[0] != TABLE_COLUMNS[0] or "A_std" not in header or header[-1] != TABLE_COLUMNS[-1]:
        raise ValueError(f"not a results table: header {header}, expected columns from {list(TABLE_COLUMNS)}")
    rows = []
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) != len(header):
            raise ValueError(f"malformed table row: {cells}")
        by_column = dict(zip(header, cells, strict=True))
        rows.append([by_column.get(column, NOT_RUN) for column in TABLE_COLUMNS])
    return rows


def row_key(row: list[str]) -> tuple:
    """What makes two rows the same measurement: label, setting and the attacks run."""
    return row[0], row[1], tuple(cell == NOT_RUN for cell in row[_ATTACK_CELLS])


def merge_rows(rows: Iterable[list[str]], new_rows: Iterable[list[str]]) -> list[list[str]]:
    """A row with the same label, setting and attacks is replaced (a re-run supersedes), others appended, order
    kept."""
    merged = {row_key(row): row for row in rows}
    for row in new_rows:
        merged[row_key(row)] = row
    return list(merged.values())


def _shown_columns(rows: list[list[str]]) -> list[int]:
    """Indices of the columns to print: label, A_std, worst case, and every attack some row ran."""
    always = {0, 2, len(TABLE_COLUMNS) - 1}
    return [i for i in range(len(TABLE_COLUMNS)) if i in always or any(row[i] != NOT_RUN for row in rows)]


def format_table(rows: Iterable[list[str]]) -> str:
    rows = list(rows)
    shown = _shown_columns(rows)
    lines = ["| " + " | ".join(TABLE_COLUMNS[i] for i in shown) + " |", "|" + "|".join("---" for _ in shown) + "|"]
    lines += ["| " + " | ".join(row[i] for i in shown) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def format_csv(rows: Iterable[list[str]]) -> str:
    """The table as CSV: each figure as a plain number (75.00% -> 75.00) with its +- in the next column;
    not-run cells empty."""
    rows = list(rows)
    shown = _shown_columns(rows)
    labels = [i for i in shown if i < 2]  # Activation and (where any row has one) Setting, as they are
    figures = [i for i in shown if i >= 2]
    header = [TABLE_COLUMNS[i] for i in labels]
    for i in figures:
        header += [TABLE_COLUMNS[i], f"{TABLE_COLUMNS[i]} +-"]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        out = [row[i] for i in labels]
        for i in figures:
            value, _, half_width = row[i].partition(PLUS_MINUS)
            out += ["", ""] if value == NOT_RUN else [value.rstrip("%"), half_width]
        writer.writerow(out)
    return text.getvalue()
