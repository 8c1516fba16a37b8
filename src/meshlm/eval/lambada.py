"""LAMBADA last-word prediction, scored as the LM Evaluation Harness scores ``lambada_openai``.

Each record's ``text`` is split at its last space: context = the text before it, target = a
space plus the last word. Target tokens are the tail of ``encode(context + target)`` after the
first ``len(encode(context))`` tokens (so a merge across the boundary is handled as lm-eval
does); trailing spaces of the context move into the target. Accuracy counts examples whose
every target token is the model's greedy (argmax) choice; perplexity is
``exp(mean over examples of the target's summed NLL)``, lm-eval's ``perplexity`` aggregation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from meshlm.data.sources import iter_jsonl_texts
from meshlm.errors import MeshLMError
from meshlm.eval.perplexity import prefix_token_id
from meshlm.eval.scoring import model_max_length, pair_item, prepare_model, score_items


def read_jsonl_texts(path: str | Path) -> list[str]:
    """The ``text`` field of every line of a LAMBADA-style jsonl file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MeshLMError(f"LAMBADA file {path} does not exist; give a jsonl file with a 'text' field per line.")
    return list(iter_jsonl_texts(path))


def split_last_word(text: str) -> tuple[str, str]:
    """``(context, " " + last word)`` with lm-eval's rule: split on single spaces."""
    context, _, word = text.rpartition(" ")
    return context, " " + word


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation token ids, split off one encoding of their concatenation.

    An empty context becomes the prefix token (BOS, else EOS), as in lm-eval.
    """
    if not context:
        return [prefix_token_id(tokenizer)], tokenizer.encode(continuation, add_special_tokens=False)
    stripped = context.rstrip()
    continuation = context[len(stripped) :] + continuation
    whole = tokenizer.encode(stripped + continuation, add_special_tokens=False)
    context_ids = tokenizer.encode(stripped, add_special_tokens=False)
    return context_ids, whole[len(context_ids) :]


def lambada(
    model: nn.Module,
    tokenizer,
    path_or_records: str | Path | Iterable[dict],
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict:
    """Accuracy and perplexity on LAMBADA records (a jsonl path, or dicts with a ``text`` field).

    Inputs longer than the model's context keep their last tokens (left truncation).
    """
    if isinstance(path_or_records, str | Path):
        texts = read_jsonl_texts(path_or_records)
    else:
        texts = [record["text"] for record in path_or_records]
    if not texts:
        raise MeshLMError("LAMBADA needs at least one record.")
    max_length = model_max_length(model)
    items = [pair_item(*encode_pair(tokenizer, *split_last_word(text)), max_length) for text in texts]
    run_on = prepare_model(model, device)
    scores = score_items(model, items, batch_size=batch_size, device=run_on, progress=progress, desc="lambada")
    mean_nll = -sum(s.logprob for s in scores) / len(scores)
    return {
        "acc": sum(s.greedy for s in scores) / len(scores),
        "perplexity": math.exp(mean_nll),
        "mean_nll": mean_nll,
        "examples": len(scores),
        "target_tokens": sum(s.n_tokens for s in scores),
    }
