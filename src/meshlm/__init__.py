"""meshlm: recursive (looped) transformer language models with MeSH memory-as-state-highways.

``import meshlm`` registers the model with ``AutoConfig`` and ``AutoModelForCausalLM``.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from meshlm.config import Layout, MeshLMConfig, parse_layout, parse_scheme
from meshlm.errors import MeshLMError
from meshlm.model import MeshLMForCausalLM, MeshLMModel

__version__ = "0.1.0"

AutoConfig.register("meshlm", MeshLMConfig, exist_ok=True)
AutoModelForCausalLM.register(MeshLMConfig, MeshLMForCausalLM, exist_ok=True)

__all__ = [
    "Layout",
    "MeshLMConfig",
    "MeshLMError",
    "MeshLMForCausalLM",
    "MeshLMModel",
    "parse_layout",
    "parse_scheme",
]
