"""meshlm: recursive (looped) transformer language models with MeSH memory-as-state-highways.

``import meshlm`` registers the model with ``AutoConfig`` and ``AutoModelForCausalLM``.

The package imports nothing heavy itself, so ``meshlm --help`` does not pay for torch: the public
names load on first use, and the registration runs as soon as transformers' Auto modules exist
(right away if they are already imported, otherwise when they are; :class:`_RegisterWhenImported`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

# public name -> module that defines it (loaded on first attribute access)
_PUBLIC = {
    "Layout": "meshlm.config",
    "MeshLMConfig": "meshlm.config",
    "parse_layout": "meshlm.config",
    "parse_scheme": "meshlm.config",
    "MeshLMError": "meshlm.errors",
    "MeshLMForCausalLM": "meshlm.model",
    "MeshLMModel": "meshlm.model",
}
__all__ = sorted(_PUBLIC)

_CONFIG_AUTO = "transformers.models.auto.configuration_auto"
_MODEL_AUTO = "transformers.models.auto.modeling_auto"


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'meshlm' has no attribute {name!r}")


def _register(auto_module: str) -> None:
    """Register MeshLMConfig (with AutoConfig) or MeshLMForCausalLM (with AutoModelForCausalLM)."""
    from meshlm.config import MeshLMConfig

    if auto_module == _CONFIG_AUTO:
        sys.modules[_CONFIG_AUTO].AutoConfig.register("meshlm", MeshLMConfig, exist_ok=True)
    else:
        from meshlm.model import MeshLMForCausalLM

        sys.modules[_MODEL_AUTO].AutoModelForCausalLM.register(MeshLMConfig, MeshLMForCausalLM, exist_ok=True)


class _RegisterWhenImported(importlib.abc.MetaPathFinder):
    """Runs :func:`_register` right after transformers executes one of its Auto modules.

    Each hook fires after its own module is complete and needs nothing that module's importers
    could still be building: the config hook only the config classes that configuration_auto
    itself imported, the model hook the modelling classes, which modeling_auto never imports.
    """

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name not in self.names:
            return None
        self.names.discard(name)
        if not self.names:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)  # the regular finders, this one no longer asks for `name`
        exec_module = spec.loader.exec_module

        def exec_then_register(module) -> None:
            exec_module(module)
            _register(name)

        spec.loader.exec_module = exec_then_register
        return spec


def _install() -> None:
    pending = set()
    for name in (_CONFIG_AUTO, _MODEL_AUTO):
        if name in sys.modules:
            _register(name)
        else:
            pending.add(name)
    if pending:
        sys.meta_path.insert(0, _RegisterWhenImported(pending))


_install()
