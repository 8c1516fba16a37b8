"""Evaluation: token and rolling perplexity, LAMBADA, the LM Evaluation Harness bridge, result tables.

Everything here needs only the Hugging Face causal LM interface (``model(input_ids).logits``),
so meshlm models and any ``transformers`` causal LM are evaluated the same way. ``lm_eval`` is
imported only when a harness task is run (extra ``meshlm[eval]``).
"""

from meshlm.eval.harness import run_harness
from meshlm.eval.lambada import lambada
from meshlm.eval.perplexity import bits_per_byte, rolling_document_perplexity, token_perplexity
from meshlm.eval.tables import table1_markdown

__all__ = [
    "bits_per_byte",
    "lambada",
    "rolling_document_perplexity",
    "run_harness",
    "table1_markdown",
    "token_perplexity",
]
