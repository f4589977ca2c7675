"""Reading the project's YAML files (model presets, stage configs) with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The top-level mapping of a YAML file; ``what`` names the kind of file in errors ("model preset")."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: cannot read {what} ({error})") from error
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a {what} must be a mapping")
    return dict(raw)
