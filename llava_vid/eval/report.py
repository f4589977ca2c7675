"""An :class:`~llava_vid.eval.runner.EvalReport` as a text table, ``eval.json`` and ``eval.png``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from llava_vid.atomic import write_file_atomically, write_text_atomically
from llava_vid.eval.runner import EvalReport

__all__ = ["format_table", "plot_accuracy", "read_report", "write_report"]


def format_table(report: EvalReport) -> str:
    """One row per task — task, n, accuracy, chance, ×chance — and an overall row (micro average;
    its chance is the n-weighted chance of the tasks)."""
    rows = [(r.task, str(r.n), f"{r.accuracy:.1%}", f"{r.chance:.1%}", f"{r.times_chance:.2f}") for r in report.tasks]
    overall = report.accuracy / report.chance
    rows.append(("overall", str(report.n), f"{report.accuracy:.1%}", f"{report.chance:.1%}", f"{overall:.2f}"))
    header = ("task", "n", "accuracy", "chance", "×chance")
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        # Names left-aligned, numbers right-aligned, as a reader scans them.
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *(line(row) for row in rows[:-1]), rule, line(rows[-1])])


def plot_accuracy(report: EvalReport, path: str | os.PathLike) -> Path:
    """A bar chart of accuracy per task with each task's chance level drawn across its bar."""
    # The Agg canvas directly (no pyplot): no global state, no display needed, safe in threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    names = [result.task for result in report.tasks]
    positions = range(len(names))
    figure = Figure(figsize=(max(5.0, 0.9 * len(names) + 2), 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    bars = axes.bar(positions, [r.accuracy for r in report.tasks], width=0.7, color="tab:blue", label="accuracy")
    for bar, result in zip(bars, report.tasks):
        left, width = bar.get_x(), bar.get_width()
        axes.hlines(result.chance, left, left + width, colors="tab:red", linestyles="--", linewidth=2)
        axes.text(left + width / 2, min(result.accuracy, 0.93) + 0.02, f"n={result.n}", ha="center", fontsize=8)
    axes.plot([], [], color="tab:red", linestyle="--", label="chance")  # a legend entry for the per-bar lines
    axes.set_xticks(list(positions), names, rotation=30, ha="right")
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("exact-match accuracy")
    axes.set_title(f"held-out accuracy, overall {report.accuracy:.1%} (chance {report.chance:.1%}, n={report.n})")
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)  # beside the bars, never over one
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def read_report(path: str | os.PathLike) -> EvalReport:
    """An ``eval.json`` (or the folder holding it) back as an :class:`EvalReport`."""
    path = Path(path)
    if path.is_dir():
        path = path / "eval.json"
    return EvalReport.from_json(json.loads(path.read_text(encoding="utf-8")))


def write_report(report: EvalReport, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``eval.png`` and then ``eval.json`` into ``out_dir`` (created if needed), each atomically, so
    an ``eval.json`` there is always whole and never older than its chart; return their paths."""
    out = Path(out_dir)
    json_path, png_path = out / "eval.json", out / "eval.png"
    text = json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n"
    write_file_atomically(png_path, lambda staging: plot_accuracy(report, staging))
    write_text_atomically(json_path, text)
    return json_path, png_path
