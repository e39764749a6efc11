"""The replication report's Tables 1-8 (experiments/replication_report.json) and tables that set this
project's figures beside them: for each model the report's row, our row under the report's own attacks
(PGD at rel_stepsize 0.003, DeepFool) and our row under the full suite, with the report's anomalies named
below.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from experiments.tables import PLUS_MINUS
from kwta.attacks import ATTACK_COLUMNS
from kwta.evaluation import plus_minus

REPORT_PATH = Path(__file__).with_name("replication_report.json")
NOT_RUN = "-"


def load_report(path: Path = REPORT_PATH) -> dict:
    return json.loads(Path(path).read_text())


def report_table(report: dict, arch: str, dataset: str, training: str) -> dict | None:
    """The report's table for (arch, dataset, "scratch" | "finetune"), or None when it has none."""
    for table in report["tables"]:
        if (table["arch"], table["dataset"], table["training"]) == (arch, dataset, training):
            return table
    return None


def anomalies(report: dict, table_number: int) -> list[str]:
    return [anomaly["text"] for anomaly in report["anomalies"] if table_number in anomaly["tables"]]


def with_interval(share: float, interval: list[float] | None) -> str:
    """'12.50% +- 4.07', the +- covering the 95% interval attack.py wrote; the figure alone without one."""
    return percent(share) + (f"{PLUS_MINUS}{100 * plus_minus(share, interval):.2f}" if interval else "")


def robust_accuracy(result: dict) -> dict[str, str]:
    """attack.py's JSON -> {attack or worst_case: '12.50% +- 4.07'} at its first eps."""
    first = result["results"][0]
    intervals = first.get("interval", {})
    return {name: with_interval(share, intervals.get(name)) for name, share in first["accuracy"].items()}


@dataclass
class ModelResults:
    """Everything one model contributes to a comparison table; None where a figure does not exist (yet)."""

    label: str
    report: dict | None = None  # the report's row: A_std, PGD, DeepFool in percent
    test_accuracy: float | None = None  # train.py's final accuracy on the test set
    report_attacks: dict | None = None  # attack.py's JSON for the report's protocol (PGD rel 0.003, DeepFool)
    suite: dict | None = None  # attack.py's JSON for the full suite


def percent(fraction: float | None) -> str:
    return NOT_RUN if fraction is None else f"{100 * fraction:.2f}%"


def comparison_table(models: list[ModelResults]) -> str:
    """Markdown: three rows per model (report, ours with the report's attacks, ours with the full suite)."""
    attacks = ["pgd", "deepfool"]
    for model in models:
        for result in (model.report_attacks, model.suite):
            attacks += [name for name in (result or {}).get("attacks", []) if name not in attacks]
    header = ["Model", "Figures", "A_std", "Clean, attacked images",
              *(ATTACK_COLUMNS.get(name, name) for name in attacks), "Worst case"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in models:
        if model.report is not None:
            cells = [f"{model.report['A_std']:.2f}%", NOT_RUN]
            cells += [f"{model.report[ATTACK_COLUMNS[name]]:.2f}%" if name in ("pgd", "deepfool") else NOT_RUN
                      for name in attacks]
            lines.append("| " + " | ".join([model.label, "report", *cells, NOT_RUN]) + " |")
        for figures, result in (("ours, report's attacks", model.report_attacks), ("ours, full suite", model.suite)):
            accuracy = robust_accuracy(result) if result else {}
            clean = with_interval(result["clean_accuracy"], result.get("clean_interval")) if result else NOT_RUN
            cells = [percent(model.test_accuracy), clean]
            cells += [accuracy.get(name, NOT_RUN) for name in [*attacks, "worst_case"]]
            lines.append("| " + " | ".join([model.label, figures, *cells]) + " |")
    return "\n".join(lines) + "\n"
