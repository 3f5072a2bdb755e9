"""Report section on confidence: how sure each prediction is against how often it is right.

Per table (dataset, M): the mixture's mean confidence and its accuracy minus confidence (positive: under-
confident, negative: over-confident), the same for the members' own mixtures and for each exit's ensemble of
the members, on the clean test set and as the mean over the 25 shifted sets. It reads the ``confidence``,
``accuracy_minus_confidence``, ``member_*`` and ``exit_*`` metrics of metrics.json; runs evaluated before
those metrics existed show "–" until ``mimmo evaluate RUN`` recomputes them.
"""

from __future__ import annotations

from collections.abc import Sequence

from mimmo.report.runs import RunGroup, mean_std
from mimmo.report.tables import build_tables, row_label

CONFIDENCE_FILE = "confidence.md"


def _mean_of_list(values: list[float] | None) -> float | None:
    return sum(values) / len(values) if values else None


def _cell(values: list[float | None], sign: str = "+") -> str:
    """Mean (± population std from two values on) of the values that are there; ``sign="+"`` prints the sign
    (a gap), ``""`` not (a level)."""
    present = [v for v in values if v is not None]  # NaN kept: the mean is then nan, shown as such
    if not present:
        return "–"
    mean, std = mean_std(present)
    return f"{mean:{sign}.3f}" if len(values) < 2 else f"{mean:{sign}.3f} ± {std:.3f}"


def _per_exit(group: RunGroup) -> str:
    """Accuracy minus confidence of each exit's ensemble, seed means, shallow to deep ('–' for one exit)."""
    lists = [run.get("test", "exit_accuracy_minus_confidence") for run in group.runs]
    lists = [values for values in lists if values]
    if not lists:
        return "–"
    return " / ".join(f"{sum(v[i] for v in lists) / len(lists):+.2f}" for i in range(len(lists[0])))


def confidence_markdown(groups: Sequence[RunGroup]) -> str:
    """One table per (dataset, settings, M): confidence and accuracy minus confidence of the mixture, the
    members and the exits ('' when no run has the metrics)."""
    texts = []
    for table in build_tables(groups):
        if not any(run.get("test", "confidence") is not None for group in table.groups for run in group.runs):
            continue
        lines = [f"### Confidence: {table.title}", "",
                 "| Method | Acc | Conf. | Acc − Conf. | Members: Conf. | Members: Acc − Conf. "
                 "| Exits: Acc − Conf. (shallow → deep) | Shifted: Conf. | Shifted: Acc − Conf. |",
                 "|:--" + "|--:" * 8 + "|"]
        for group in table.groups:
            runs = group.runs
            cells = [_cell([run.get("test", "accuracy") for run in runs], sign=""),
                     _cell([run.get("test", "confidence") for run in runs], sign=""),
                     _cell([run.get("test", "accuracy_minus_confidence") for run in runs]),
                     _cell([_mean_of_list(run.get("test", "member_confidence")) for run in runs], sign=""),
                     _cell([_mean_of_list(run.get("test", "member_accuracy_minus_confidence")) for run in runs]),
                     _per_exit(group),
                     _cell([run.get("shifted", "summary", "confidence", "mean") for run in runs], sign=""),
                     _cell([run.get("shifted", "summary", "accuracy_minus_confidence", "mean") for run in runs])]
            lines.append("| " + " | ".join([row_label(group, table), *cells]) + " |")
        lines += ["", "Mean (± population std over seeds, from two seeds on). Conf.: mean top probability. "
                  "Acc − Conf. > 0: under-confident, < 0: over-confident. Members: the mean over members of each "
                  "member's own mixture over its exits (– for one member). Exits: each exit's equal-weight ensemble "
                  "of the members (– for one exit). Shifted: the mean over the 25 shifted test sets."]
        texts.append("\n".join(lines) + "\n")
    return ("## Confidence\n\n" + "\n".join(texts)) if texts else ""
