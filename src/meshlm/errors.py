"""User-facing errors.

Anything a user can get wrong (a config value, a layout string, a path, a data
source, a checkpoint) raises :class:`MeshLMError` with one clear sentence. The
CLI prints it as ``error: ...`` and exits with status 2 instead of a traceback.
"""

import json
from pathlib import Path


class MeshLMError(ValueError):
    """A bad input from the user, with a message that says how to fix it."""


def read_json(path: str | Path, hint: str = "") -> object:
    """The JSON value in ``path``; a file that is not JSON (truncated by a kill, edited) is one error naming it."""
    try:
        return json.loads(Path(path).read_text())
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise MeshLMError(f"{path} is not valid JSON ({err}){'; ' + hint if hint else ''}") from None


def read_jsonl(path: str | Path) -> list:
    """One JSON value per non-empty line of ``path``, or one error naming the file and the line."""
    records = []
    for number, line in enumerate(Path(path).read_text(errors="replace").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError as err:
                raise MeshLMError(f"{path}, line {number}, is not valid JSON ({err})") from None
    return records
