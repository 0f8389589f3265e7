"""Load a YAML config file into a pydantic model, with errors that name the file and line.

Shared by the device and the server (the server imports it, like the protocol). A typo'd key, a
wrong type or broken YAML always ends in ``ConfigFileError: path:LINE: field: message``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigFileError(ValueError):
    def __init__(self, path: str | Path, line: int | None, message: str):
        self.path, self.line = str(path), line
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")


def _lines(node: yaml.Node, prefix: tuple = ()) -> dict[tuple, int]:
    """Map each key path in the YAML document to its 1-based line number."""
    out: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            path = prefix + (k.value,)
            out[path] = k.start_mark.line + 1
            out.update(_lines(v, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[prefix + (i,)] = v.start_mark.line + 1
            out.update(_lines(v, prefix + (i,)))
    return out


def load_yaml(path: str | Path) -> tuple[dict[str, Any], dict[tuple, int]]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigFileError(path, None, "file not found") from exc
    except UnicodeDecodeError as exc:
        raise ConfigFileError(path, None, f"not UTF-8 text: {exc}") from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise ConfigFileError(path, mark.line + 1 if mark else None, f"invalid YAML: {exc.problem or exc}") from exc
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigFileError(path, 1, "top level must be a mapping of settings")
    return data, _lines(node) if node is not None else {}


def error_line(lines: dict[tuple, int], loc: tuple) -> int | None:
    """The line of the deepest key of ``loc`` present in the file."""
    for n in range(len(loc), 0, -1):
        if tuple(loc[:n]) in lines:
            return lines[tuple(loc[:n])]
    return None


def load_model(model: type[M], path: str | Path, overrides: dict[str, Any] | None = None) -> M:
    """Validate ``path`` (YAML) against ``model``; ``overrides`` (e.g. from CLI flags) win over the file."""
    data, lines = load_yaml(path)
    data = {**data, **(overrides or {})}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        field = ".".join(str(p) for p in loc) or "<root>"
        raise ConfigFileError(path, error_line(lines, loc), f"{field}: {err['msg']}") from exc
