"""Data: text sources, tokenizers, token shards and the batches cut from them (see docs/data.md)."""

from meshlm.data.shards import TokenBatchSampler, TokenShards, eval_batches, load_tokens, prepare_shards
from meshlm.data.sources import describe_source, iter_documents
from meshlm.data.tokenizers import Tokenizer, load_tokenizer

__all__ = [
    "TokenBatchSampler",
    "TokenShards",
    "Tokenizer",
    "describe_source",
    "eval_batches",
    "iter_documents",
    "load_tokenizer",
    "load_tokens",
    "prepare_shards",
]
