"""experiments/tables.py: results tables in the replication's format, merged by label, setting and attacks, and
as CSV."""

import pytest

from experiments.tables import format_csv, format_table, merge_rows, parse_table, setting, table_row


def test_table_rows_with_intervals_create_merge_and_csv():
    relu = table_row("ReLU", {"clean": 0.75, "pgd": 0.125, "worst_case": 0.125},
                     {"clean": (0.5, 0.9), "pgd": (0.05, 0.2), "worst_case": (0.05, 0.2)})
    assert relu[:4] == ["ReLU", "-", "75.00% +- 25.00", "12.50% +- 7.50"] and relu[-1] == "12.50% +- 7.50"
    assert relu.count("-") == len(relu) - 4  # the setting, and every attack not run
    kwta_row = table_row("k-WTA-0.2", {"clean": 0.75, "pgd": 0.406, "es": 0.375, "worst_case": 0.2})
    text = format_table(merge_rows(parse_table(""), [relu]))
    assert text.splitlines()[0] == "| Activation | A_std | PGD | Worst case |"  # columns nobody ran are left out
    text = format_table(merge_rows(parse_table(text), [kwta_row]))
    assert text.splitlines()[0] == "| Activation | A_std | PGD | ES | Worst case |"
    rerun = table_row("ReLU", {"clean": 0.8, "pgd": 0.1, "worst_case": 0.05})  # the same attacks: replaces
    rows = merge_rows(parse_table(text), [rerun])
    assert [row[0] for row in rows] == ["ReLU", "k-WTA-0.2"] and rows[0][2] == "80.00%"
    assert parse_table(format_table(rows)) == rows
    csv_lines = format_csv(rows).splitlines()
    assert csv_lines[0] == "Activation,A_std,A_std +-,PGD,PGD +-,ES,ES +-,Worst case,Worst case +-"
    assert csv_lines[2] == "k-WTA-0.2,75.00,,40.60,,37.50,,20.00,"
    assert format_csv([relu]).splitlines()[1] == "ReLU,75.00,25.00,12.50,7.50,12.50,7.50"
    # a table of the replication's older format still reads, its cells kept as they were
    old = "| Activation | A_std | PGD | DeepFool | ES | EOT | Transfer | Worst case |\n" + "|---" * 8 + "|\n"
    (row,) = parse_table(old + "| ReLU | 68.75% | 3.12% | 15.62% | 31.25% | 3.12% | - | 3.12% |\n")
    assert row[:4] == ["ReLU", "-", "68.75%", "3.12%"] and row[-1] == "3.12%"
    with pytest.raises(ValueError, match="not a results table"):
        parse_table("| a | b |\n|---|---|\n| 1 | 2 |\n")


def test_rows_of_another_dataset_eps_or_attack_list_are_kept_beside_each_other():
    def row(where: str, **accuracy) -> list[str]:
        return table_row("k-WTA-0.2", {"clean": 0.9, **accuracy, "worst_case": min(accuracy.values())}, where=where)
    first = row(setting("fashion-mnist", 0.1, 1000), pgd=0.1)
    others = [row(setting("cifar10", 0.1, 1000), pgd=0.2), row(setting("fashion-mnist", 0.05, 1000), pgd=0.3),
              row(setting("fashion-mnist", 0.1, 1000), pgd=0.1, bpda=0.0)]
    rows = parse_table(format_table(merge_rows([first], others)))
    assert rows == [first, *others]
    assert format_table(rows).splitlines()[0] == "| Activation | Setting | A_std | PGD | BPDA | Worst case |"
    again = row(setting("fashion-mnist", 0.1, 1000), pgd=0.15)  # the same measurement, run again: replaces
    assert merge_rows(rows, [again]) == [again, *others]
    assert format_csv([first]).splitlines()[1].startswith('k-WTA-0.2,"fashion-mnist, eps 0.1, 1000 images",90.00,')
