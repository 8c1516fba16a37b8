"""Ship the modelling code with a saved model, so it loads as Hugging Face remote code.

``transformers`` loads a model whose ``config.json`` has an ``auto_map`` from Python files in the
model folder (``trust_remote_code=True``), but it only follows *relative* imports between files of
that one folder. :func:`export_remote_code` writes flat copies of the modules the model needs
(:data:`REMOTE_MODULES`), rewrites their ``from meshlm.x import ...`` lines to relative imports of
the flat names and sets ``auto_map``; the folder then loads with no ``import meshlm``, e.g. in the
stock ``lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True``.

``MeshLMForCausalLM.save_pretrained`` calls it, so every saved model (and training checkpoint) is
remote-code ready. The rewrite refuses a meshlm import outside :data:`REMOTE_MODULES` (it would break
the copy), unless the import is optional: inside ``try: ... except ImportError``, which transformers
skips too when it checks a remote file's imports.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from pathlib import Path

from meshlm.errors import MeshLMError

# package module -> flat file name (no .py) in the model folder; the auto_map targets live in the first two
REMOTE_MODULES: dict[str, str] = {
    "meshlm.config": "configuration_meshlm",
    "meshlm.model.lm": "modeling_meshlm",
    "meshlm.errors": "meshlm_errors",
    "meshlm.model.layers": "meshlm_layers",
    "meshlm.model.schemes": "meshlm_schemes",
    "meshlm.model.mesh": "meshlm_mesh",
    "meshlm.model.router_stats": "meshlm_router_stats",
    "meshlm.model.loss": "meshlm_loss",
}
AUTO_MAP: dict[str, str] = {
    "AutoConfig": "configuration_meshlm.MeshLMConfig",
    "AutoModelForCausalLM": "modeling_meshlm.MeshLMForCausalLM",
}
_OPTIONAL_IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError"}


def _is_meshlm(name: str) -> bool:
    return name == "meshlm" or name.startswith("meshlm.")


def _catches_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        caught = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(isinstance(t, ast.Name) and t.id in _OPTIONAL_IMPORT_ERRORS for t in caught):
            return True
    return False


def _imports(node: ast.AST, optional: bool = False):
    """Yield (import node, optional) under ``node``; optional = in the body of a ``try`` that catches ImportError."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node, optional
    elif isinstance(node, ast.Try):
        for stmt in node.body:
            yield from _imports(stmt, optional or _catches_import_error(node))
        for part in (*node.handlers, *node.orelse, *node.finalbody):
            yield from _imports(part, optional)
    else:
        for child in ast.iter_child_nodes(node):
            yield from _imports(child, optional)


def _absolute(node: ast.ImportFrom, module: str) -> str | None:
    """The absolute module a ``from ... import`` names (None for ``from . import x``, which names modules)."""
    if node.level == 0:
        return node.module
    if not node.module:
        return None
    return f"{module.rsplit('.', node.level)[0]}.{node.module}"


def rewrite_imports(source: str, module: str, flat_names: dict[str, str] = REMOTE_MODULES) -> str:
    """``source`` of package module ``module`` with its meshlm imports turned into relative imports of flat files.

    ``from meshlm.a.b import X`` becomes ``from .<flat_names['meshlm.a.b']> import X``; everything
    else is left byte for byte. Raises :class:`MeshLMError` for a non-optional meshlm import that
    cannot be rewritten (a module outside ``flat_names``, ``import meshlm...``, ``from . import x``).
    """
    edits = []
    for node, optional in _imports(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names if _is_meshlm(a.name)]
            if names and not optional:
                raise MeshLMError(
                    f"{module} has `import {names[0]}`, which remote code cannot resolve; "
                    f"write `from <module> import <name>` so meshlm.hub can rewrite it"
                )
            continue
        target = _absolute(node, module)
        if target is None:
            if not optional:
                raise MeshLMError(
                    f"{module} imports modules with `from {'.' * node.level} import ...`; "
                    "import names from a module (`from meshlm.x import name`) so meshlm.hub can rewrite it"
                )
            continue
        if not _is_meshlm(target):
            continue
        if target in flat_names:
            new = ast.ImportFrom(module=flat_names[target], names=node.names, level=1)
            edits.append((node, ast.unparse(new)))
        elif not optional:
            raise MeshLMError(
                f"{module} imports {target}, which is not shipped with the model's remote code; "
                "add it to meshlm.hub.REMOTE_MODULES or import from a module that is shipped"
            )
    lines = source.encode().splitlines(keepends=True)
    for node, text in sorted(edits, key=lambda e: (e[0].lineno, e[0].col_offset), reverse=True):
        first, last = node.lineno - 1, node.end_lineno - 1
        head, tail = lines[first][: node.col_offset], lines[last][node.end_col_offset :]
        lines[first : last + 1] = [head + text.encode() + tail]
    return b"".join(lines).decode()


def _source(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise MeshLMError(f"cannot find the Python source of {module}; meshlm must be installed from source files")
    return Path(spec.origin).read_text(encoding="utf-8")


def export_remote_code(model_dir: str | os.PathLike) -> list[Path]:
    """Write the flat modelling files into ``model_dir`` and set ``auto_map`` in its config.json.

    ``model_dir`` must hold a saved meshlm model (its config.json). Returns the files written.
    Running it again overwrites them, so an older checkpoint can be made remote-code ready too.
    """
    from meshlm import __version__

    folder = Path(model_dir)
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MeshLMError(f"{folder} has no readable config.json ({e}); save the model there first") from None
    if config.get("model_type") != "meshlm":
        raise MeshLMError(f"{config_path} describes a {config.get('model_type')!r} model, not a meshlm model")
    written = []
    for module, flat in REMOTE_MODULES.items():
        header = f"# Copied from {module} (meshlm {__version__}) by meshlm.hub.export_remote_code; do not edit.\n"
        path = folder / f"{flat}.py"
        path.write_text(header + rewrite_imports(_source(module), module), encoding="utf-8")
        written.append(path)
    config["auto_map"] = dict(AUTO_MAP)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return written


def foreign_code(model_dir: str | os.PathLike) -> str | None:
    """The first ``auto_map`` target of a folder meshlm does not own, else None.

    A meshlm model folder's ``auto_map`` names the flat copies of meshlm's own code; loading it
    with ``trust_remote_code=False`` uses the classes ``import meshlm`` registered instead, so it
    runs nothing from the folder. Any other folder with an ``auto_map`` (in config.json or
    tokenizer_config.json) would run the folder's Python files.
    """
    folder = Path(model_dir)
    for name in ("config.json", "tokenizer_config.json"):
        try:
            values = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(values, dict) or (name == "config.json" and values.get("model_type") == "meshlm"):
            continue
        auto_map = values.get("auto_map") or {}
        targets = auto_map.values() if isinstance(auto_map, dict) else auto_map
        for target in targets:
            return f"{name} auto_map -> {target}"
    return None


def refuse_foreign_code(model_dir: str | os.PathLike, trust_remote_code: bool) -> None:
    """MeshLMError if ``model_dir`` would run its own Python code and the user did not opt in."""
    found = None if trust_remote_code else foreign_code(model_dir)
    if found:
        raise MeshLMError(
            f"{model_dir} ships its own Python code ({found}); meshlm does not run code from a model folder "
            "unless you read it and pass --trust-remote-code"
        )
