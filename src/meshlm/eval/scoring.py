"""Shared scoring primitive: summed log-probabilities of target tokens, batched.

Every evaluation in :mod:`meshlm.eval` reduces to *items*: an input sequence fed to the model
and the target tokens predicted by its last ``len(targets)`` positions. Items are batched with
right padding; because the model is causal, padding to the right of a sequence never changes the
logits of its real positions, so no attention mask is needed (LM Evaluation Harness does the
same). Forward passes run under ``torch.inference_mode`` with bf16 autocast on CUDA and in fp32
elsewhere; log-softmax is always taken in fp32 and sums are accumulated in float64.

The only model interface used is the Hugging Face causal LM one:
``model(input_ids, use_cache=False).logits`` of shape (batch, seq, vocab), plus ``num_loops=k``
when a loop count is asked for (meshlm models).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from meshlm.errors import MeshLMError
from meshlm.train.hardware import resolve_device

DEFAULT_MAX_LENGTH = 2048
# config attributes that carry a model's context length, checked in this order (as lm-eval does)
_LENGTH_ATTRS = ("n_positions", "max_position_embeddings", "n_ctx")


@dataclass(frozen=True)
class Item:
    """One scoring request: ``inputs`` (1-D) and the ``targets`` its last positions predict.

    ``targets[j]`` is predicted by position ``len(inputs) - len(targets) + j``, so for a token
    stream ``s`` the pair ``(s[a:b], s[c:b + 1])`` scores tokens ``c..b`` with ``a < c``.
    """

    inputs: torch.Tensor
    targets: torch.Tensor

    def __post_init__(self) -> None:
        if not 0 < len(self.targets) <= len(self.inputs):
            raise ValueError(f"an item needs 1..{len(self.inputs)} targets, got {len(self.targets)}")


@dataclass(frozen=True)
class Scored:
    """Result for one :class:`Item`: summed log-probability (nats), token count, greedy match."""

    logprob: float
    n_tokens: int
    greedy: bool


def model_max_length(model: nn.Module, default: int = DEFAULT_MAX_LENGTH) -> int:
    """The model's context length from its config (``n_positions``, ``max_position_embeddings``, ``n_ctx``)."""
    config = getattr(model, "config", None)
    for attr in _LENGTH_ATTRS:
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def check_context(model: nn.Module, context: int) -> None:
    """MeshLMError unless 1 <= ``context`` <= the model's maximum length."""
    limit = model_max_length(model)
    if not 1 <= context <= limit:
        raise MeshLMError(f"context {context} is outside 1..{limit}, the model's maximum positions; change --context.")


def prepare_model(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """Put ``model`` in eval mode (on ``device`` if given) and return the device it runs on."""
    model.eval()
    if device is None:
        param = next(model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")
    target = resolve_device(device)
    model.to(target)
    return target


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, nothing (fp32) elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _batches(order: list[int], batch_size: int) -> Iterator[list[int]]:
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def score_items(
    model: nn.Module,
    items: Sequence[Item],
    *,
    batch_size: int,
    device: torch.device,
    progress: bool = False,
    desc: str = "scoring",
    num_loops: int | None = None,
) -> list[Scored]:
    """Score every item (in its original order); items are batched longest first.

    ``num_loops`` (recursive meshlm models) runs the shared core that many times instead of its K.
    """
    if batch_size < 1:
        raise MeshLMError(f"batch size must be >= 1, got {batch_size}.")
    order = sorted(range(len(items)), key=lambda i: -len(items[i].inputs))
    results: list[Scored | None] = [None] * len(items)
    batches = list(_batches(order, batch_size))
    loop_kwargs = {} if num_loops is None else {"num_loops": num_loops}
    with torch.inference_mode():
        for chunk in tqdm(batches, desc=desc, disable=not progress, leave=False):
            width = len(items[chunk[0]].inputs)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, : len(items[i].inputs)] = items[i].inputs
            with autocast(device):
                logits = model(ids.to(device), use_cache=False, **loop_kwargs).logits
            for row, i in enumerate(chunk):
                item = items[i]
                end, n = len(item.inputs), len(item.targets)
                logprobs = logits[row, end - n : end].float().log_softmax(-1)
                targets = item.targets.to(device)
                picked = logprobs.gather(-1, targets[:, None]).squeeze(-1)
                greedy = bool((logprobs.argmax(-1) == targets).all())
                results[i] = Scored(float(picked.double().sum()), n, greedy)
    return [r for r in results if r is not None]


def pair_item(context: Sequence[int], continuation: Sequence[int], max_length: int) -> Item:
    """The item scoring ``continuation`` after ``context``, left-truncated to ``max_length`` inputs.

    The model reads ``(context + continuation)[:-1]``, keeping at most the last ``max_length``
    tokens (the LM Evaluation Harness rule), and its last ``len(continuation)`` positions are scored.
    """
    if not continuation:
        raise MeshLMError("cannot score an empty continuation (the target text encodes to no token).")
    if len(continuation) > max_length:
        raise MeshLMError(f"a continuation of {len(continuation)} tokens does not fit a {max_length}-token context.")
    whole = torch.tensor([*context, *continuation], dtype=torch.long)
    inputs = whole[-(max_length + 1) :][:-1]
    return Item(inputs, whole[-len(continuation) :])
