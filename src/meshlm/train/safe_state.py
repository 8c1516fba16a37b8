"""Pickle-free state files: nested dicts/lists/tuples of tensors and scalars <-> one safetensors file.

Optimizer and RNG states are such nests. ``torch.save``/``torch.load`` would pickle them, and
unpickling a file runs whatever code it names, so a planted checkpoint could take over a
``--resume``. Here the tensors go into a safetensors file (raw bytes plus a JSON header) and
the structure around them (keys, tuples, ints, floats, strings, None) into its metadata as
JSON: reading the file back can only ever produce tensors and plain values.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from meshlm.errors import MeshLMError

_STRUCTURE = "meshlm_structure"
_SCALARS = (bool, int, float, str, type(None))


def _encode(value, path: str, tensors: dict[str, torch.Tensor]):
    """The JSON form of ``value``; tensors are moved into ``tensors`` under their path and referenced."""
    if isinstance(value, torch.Tensor):
        if path in tensors:
            raise ValueError(f"two tensors at state path {path!r}")
        tensors[path] = value.detach().contiguous()
        return {"tensor": path}
    if isinstance(value, dict):
        if not all(isinstance(k, (str, int)) for k in value):
            raise TypeError(f"state keys at {path!r} must be str or int")
        return {"dict": [[k, _encode(v, f"{path}/{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        items = [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]
        return {"tuple": items} if isinstance(value, tuple) else items
    if isinstance(value, _SCALARS):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} at state path {path!r} without pickling it")


def _decode(node, tensors: dict[str, torch.Tensor]):
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if isinstance(node, dict):
        if "tensor" in node:
            return tensors[node["tensor"]]
        if "tuple" in node:
            return tuple(_decode(v, tensors) for v in node["tuple"])
        return {k: _decode(v, tensors) for k, v in node["dict"]}
    return node


def save_state(value, path: Path) -> None:
    """Write the nest ``value`` to the safetensors file ``path``."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(value, "", tensors)
    save_file(tensors, str(path), metadata={_STRUCTURE: json.dumps(structure)})


def load_state(path: Path, device: str | torch.device = "cpu"):
    """The nest written by :func:`save_state` to ``path``, tensors on ``device``; MeshLMError if unreadable."""
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            structure = json.loads((f.metadata() or {})[_STRUCTURE])
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
        return _decode(structure, tensors)
    except (OSError, SafetensorError, KeyError, TypeError, ValueError) as err:
        raise MeshLMError(f"{path} is not a readable meshlm state file ({type(err).__name__}: {err})") from None
