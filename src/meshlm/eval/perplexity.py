"""Perplexity: token-level over a held-out stream, and document-level rolling (WikiText style).

Sliding-window rule of :func:`token_perplexity` (``context`` = tokens the model reads per forward
pass, ``stride`` <= ``context``): the first window reads tokens ``[0, context)`` and scores tokens
``1..context`` (every position's next token); each later window scores the next ``stride``
tokens not yet scored and reads the ``context`` tokens just before the last of them (fewer only
at the start of the stream). So every token after the first is scored exactly once, conditioned
on at least ``context - stride + 1`` and at most ``context`` preceding tokens (all of them when
fewer exist); ``stride == 1`` gives each token its maximal left context, and ``stride ==
context`` (the default) uses disjoint input windows that each score all their positions. The
last window is left-extended to a full ``context`` tokens, which only adds context.

:func:`rolling_document_perplexity` is the same rule with ``stride == context`` applied to
each document on its own, preceded by a prefix token (BOS, else EOS): the
``loglikelihood_rolling`` computation of the LM Evaluation Harness, with its metrics.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from meshlm.errors import MeshLMError
from meshlm.eval.scoring import Item, check_context, model_max_length, prepare_model, score_items


def sliding_windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows ``(start, end, first)`` over a stream: read ``[start, end)``, score ``[first, end + 1)``."""
    if context < 1:
        raise MeshLMError(f"context must be >= 1 token, got {context}.")
    if not 1 <= stride <= context:
        raise MeshLMError(
            f"stride must be between 1 and the context ({context}), got {stride}: a larger stride "
            "would leave tokens unscored."
        )
    windows = []
    scored_end = 1  # tokens [1, scored_end) are scored
    while scored_end < n_tokens:
        end = min(n_tokens, scored_end + (stride if windows else context))
        windows.append((max(0, end - 1 - context), end - 1, scored_end))
        scored_end = end
    return windows


def window_items(stream: torch.Tensor, context: int, stride: int) -> list[Item]:
    """One scoring item per :func:`sliding_windows` window of a 1-D token stream."""
    return [
        Item(stream[start:end], stream[first : end + 1])
        for start, end, first in sliding_windows(len(stream), context, stride)
    ]


def bits_per_byte(total_nll_nats: float, n_bytes: int) -> float:
    """Bits per UTF-8 byte: ``total_nll_nats / (ln 2 * n_bytes)``."""
    if n_bytes <= 0:
        raise MeshLMError(f"bits per byte needs a positive byte count, got {n_bytes}.")
    return total_nll_nats / (math.log(2) * n_bytes)


def token_perplexity(
    model: nn.Module,
    tokens: torch.Tensor,
    context: int,
    stride: int | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    n_bytes: int | None = None,
    progress: bool = False,
    num_loops: int | None = None,
) -> dict:
    """Mean next-token loss (nats/token) and perplexity over ``tokens`` with the module's window rule.

    ``stride`` defaults to ``context`` (disjoint windows). With ``n_bytes`` (the UTF-8 byte count
    of the text the scored tokens stand for, i.e. of everything after the first token), the result
    also has ``bits_per_byte`` = total NLL / (ln 2 * n_bytes). ``num_loops`` runs a recursive meshlm
    model's shared core that many times (default: its own K).
    """
    if tokens.dim() != 1 or len(tokens) < 2:
        raise MeshLMError("token perplexity needs a 1-D stream of at least 2 tokens.")
    stride = context if stride is None else stride
    check_context(model, context)
    items = window_items(tokens.long().cpu(), context, stride)
    run_on = prepare_model(model, device)
    scores = score_items(
        model, items, batch_size=batch_size, device=run_on, progress=progress, desc="ppl", num_loops=num_loops
    )
    nll = -sum(s.logprob for s in scores)
    count = sum(s.n_tokens for s in scores)
    result = {
        "loss": nll / count,
        "perplexity": math.exp(nll / count),
        "tokens": count,
        "nll_sum": nll,
        "windows": len(items),
        "context": context,
        "stride": stride,
    }
    if n_bytes is not None:
        result.update(bytes=n_bytes, bits_per_byte=bits_per_byte(nll, n_bytes))
    return result


def documents_to_stream(tokenizer, documents: Iterable[str], max_tokens: int | None = None) -> tuple[torch.Tensor, int]:
    """Token stream ``EOS d1 EOS d2 ...`` and the UTF-8 byte count of the documents it holds.

    The leading EOS makes the first document's first token scorable; the EOS separators are
    scored too (predicting a document's end) but carry no bytes. With ``max_tokens`` the stream
    stops after the document that reaches it, so the byte count stays exact.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise MeshLMError("the tokenizer has no EOS token to separate documents; set eos_token in its config.")
    ids: list[int] = []
    n_bytes = 0
    for doc in documents:
        ids.append(eos)
        ids.extend(tokenizer.encode(doc, add_special_tokens=False))
        n_bytes += len(doc.encode("utf-8"))
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    if len(ids) < 2:
        raise MeshLMError("the documents hold no token to score.")
    return torch.tensor(ids, dtype=torch.long), n_bytes


def prefix_token_id(tokenizer) -> int:
    """Token that conditions a document's first token: BOS if the tokenizer has one, else EOS."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise MeshLMError("the tokenizer has neither a BOS nor an EOS token to condition documents on.")
    return token


def count_words(text: str) -> int:
    """Words as the LM Evaluation Harness counts them: pieces of ``re.split(r"\\s+", text)``."""
    return len(re.split(r"\s+", text))


def rolling_document_perplexity(
    model: nn.Module,
    tokenizer,
    documents: Sequence[str],
    context: int | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    progress: bool = False,
    num_loops: int | None = None,
) -> dict:
    """Document-level rolling log-likelihood with the LM Evaluation Harness ``wikitext`` metrics.

    Each document is encoded without special tokens, preceded by :func:`prefix_token_id` and
    scored from its first token in disjoint rolling windows of ``context`` tokens (default: the
    model's maximum). With LL the summed log-likelihood over all documents:
    word_perplexity = exp(-LL / words), byte_perplexity = exp(-LL / bytes) and
    bits_per_byte = -LL / (bytes * ln 2), where words (:func:`count_words`) and UTF-8 bytes are
    counted on the documents exactly as given (lm-eval counts the raw WikiText page). ``num_loops``
    as in :func:`token_perplexity`.
    """
    if not documents:
        raise MeshLMError("rolling perplexity needs at least one document.")
    context = model_max_length(model) if context is None else context
    check_context(model, context)
    prefix = prefix_token_id(tokenizer)
    items = []
    n_tokens = 0
    for doc in documents:
        ids = tokenizer.encode(doc, add_special_tokens=False)
        n_tokens += len(ids)
        items += window_items(torch.tensor([prefix, *ids], dtype=torch.long), context, context)
    run_on = prepare_model(model, device)
    scores = score_items(
        model, items, batch_size=batch_size, device=run_on, progress=progress, desc="rolling", num_loops=num_loops
    )
    loglikelihood = sum(s.logprob for s in scores)
    words = sum(count_words(doc) for doc in documents)
    n_bytes = sum(len(doc.encode("utf-8")) for doc in documents)
    return {
        "word_perplexity": math.exp(-loglikelihood / words),
        "byte_perplexity": math.exp(-loglikelihood / n_bytes),
        "bits_per_byte": bits_per_byte(-loglikelihood, n_bytes),
        "loglikelihood": loglikelihood,
        "documents": len(documents),
        "tokens": n_tokens,
        "words": words,
        "bytes": n_bytes,
        "context": context,
    }
