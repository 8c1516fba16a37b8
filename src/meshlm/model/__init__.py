"""The meshlm model: GPT-NeoX layers, state-passing schemes, MeSH and the causal-LM wrapper."""

from meshlm.model.lm import MeshLMForCausalLM, MeshLMModel

__all__ = ["MeshLMForCausalLM", "MeshLMModel"]
