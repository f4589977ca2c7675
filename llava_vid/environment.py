"""What a run ran on: package versions, Python, CPU — written beside a run's results so that two runs
whose numbers differ can be traced to a machine or a package version rather than guessed at."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["PACKAGES", "describe_environment", "version_changes"]

# The distributions whose kernels or defaults can change a trained model's numbers.
PACKAGES: tuple[str, ...] = (
    "torch", "transformers", "deepspeed", "accelerate", "tokenizers", "numpy", "pillow", "av", "decord", "peft",
    "llava-vid",
)  # fmt: skip


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo where there is one (Linux), else what platform says."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_environment() -> dict[str, Any]:
    """This process's environment: UTC start time, Python, platform, CPU, usable cores, torch's thread
    count, CUDA and its device count, and the versions of :data:`PACKAGES` (``None`` where one is not installed)."""
    import torch

    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # The count, not the names: naming a device opens a CUDA context this process would then hold.
        "cuda": torch.version.cuda,
        "cuda_devices": torch.cuda.device_count(),
        "packages": {name: _version(name) for name in PACKAGES},
    }


def version_changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``"transformers 5.23.0 → 5.25.0"`` for each package (and the CPU) that differs between two
    :func:`describe_environment` records."""
    packages_before = before.get("packages", {})
    changes = [
        f"{name} {packages_before.get(name)} → {version}"
        for name, version in now["packages"].items()
        if packages_before.get(name) != version
    ]
    if before.get("cpu") != now["cpu"]:
        changes.append(f"CPU {before.get('cpu')} → {now['cpu']}")
    return changes
