"""experiments/tables.py: results tables in the replication's format, merged by label, and as CSV."""

import pytest

from experiments.tables import format_csv, format_table, merge_rows, parse_table, table_row


def test_table_rows_with_intervals_create_merge_and_csv():
    relu = table_row("ReLU", {"clean": 0.75, "pgd": 0.125, "worst_case": 0.125},
                     {"clean": (0.5, 0.9), "pgd": (0.05, 0.2), "worst_case": (0.05, 0.2)})
    assert relu[:3] == ["ReLU", "75.00% +- 25.00", "12.50% +- 7.50"] and relu[-1] == "12.50% +- 7.50"
    assert relu.count("-") == len(relu) - 4  # every attack not run
    kwta_row = table_row("k-WTA-0.2", {"clean": 0.75, "pgd": 0.406, "es": 0.375, "worst_case": 0.2})
    text = format_table(merge_rows(parse_table(""), [relu]))
    assert text.splitlines()[0] == "| Activation | A_std | PGD | Worst case |"  # columns nobody ran are left out
    text = format_table(merge_rows(parse_table(text), [kwta_row]))
    assert text.splitlines()[0] == "| Activation | A_std | PGD | ES | Worst case |"
    rerun = table_row("ReLU", {"clean": 0.8, "pgd": 0.1, "bpda": 0.05, "worst_case": 0.05})
    rows = merge_rows(parse_table(text), [rerun])
    assert [row[0] for row in rows] == ["ReLU", "k-WTA-0.2"] and rows[0][1] == "80.00%"
    assert parse_table(format_table(rows)) == rows
    csv_lines = format_csv(rows).splitlines()
    assert csv_lines[0] == "Activation,A_std,A_std +-,PGD,PGD +-,BPDA,BPDA +-,ES,ES +-,Worst case,Worst case +-"
    assert csv_lines[2] == "k-WTA-0.2,75.00,,40.60,,,,37.50,,20.00,"
    assert format_csv([relu]).splitlines()[1] == "ReLU,75.00,25.00,12.50,7.50,12.50,7.50"
    # a table of the replication's older format still reads, its cells kept as they were
    old = "| Activation | A_std | PGD | DeepFool | ES | EOT | Transfer | Worst case |\n" + "|---" * 8 + "|\n"
    (row,) = parse_table(old + "| ReLU | 68.75% | 3.12% | 15.62% | 31.25% | 3.12% | - | 3.12% |\n")
    assert row[:3] == ["ReLU", "68.75%", "3.12%"] and row[-1] == "3.12%"
    with pytest.raises(ValueError, match="not a results table"):
        parse_table("| a | b |\n|---|---|\n| 1 | 2 |\n")
