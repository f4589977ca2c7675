"""Held-out evaluation of a model on the synthetic world's closed-answer tasks.

    from llava_vid.eval import evaluate, format_table, write_report

    report = evaluate(model, processor, "runs/world", tasks=["video_colour"], limit=20)
    print(format_table(report))
    json_path, png_path = write_report(report, "runs/eval")

Modules: :mod:`~llava_vid.eval.tasks` (world folder → question conversations and references),
:mod:`~llava_vid.eval.scoring` (answer normalisation, exact match), :mod:`~llava_vid.eval.runner`
(batched greedy generation, :class:`EvalReport`), :mod:`~llava_vid.eval.report` (table, JSON, chart).
"""

from llava_vid.eval.report import format_table, plot_accuracy, read_report, write_report
from llava_vid.eval.runner import EvalReport, Example, TaskResult, evaluate
from llava_vid.eval.scoring import accuracy, is_exact_match, normalize_answer
from llava_vid.eval.tasks import EvalSample, EvalTask, load_tasks

__all__ = [
    "EvalReport",
    "EvalSample",
    "EvalTask",
    "Example",
    "TaskResult",
    "accuracy",
    "evaluate",
    "format_table",
    "is_exact_match",
    "load_tasks",
    "normalize_answer",
    "plot_accuracy",
    "read_report",
    "write_report",
]
