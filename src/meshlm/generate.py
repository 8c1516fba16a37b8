"""``meshlm generate MODEL_DIR --prompt TEXT``: continue a prompt with a saved model, as litgpt's ``generate``.

Decoding is the model's own Hugging Face ``generate``: greedy at temperature 0 (the default, so
the same command always prints the same text), sampling with top-k / top-p above it, seeded by
``seed`` so that a seed repeats its text on the same device. The KV cache is dynamic unless
``--cache static`` asks for the fixed-size one over which transformers compiles the decode step on
CUDA: that pays off for long generations only, and on an H200 a tiny MeSH model's compiled static
decode (then under autocast) had not returned 24 tokens after 400 s, so it is not the default
(nor is compilation in litgpt's, nanoGPT's or transformers' own ``generate``). On CUDA the
weights are cast to bf16, as ``bench/decode.py`` times them; on CPU everything runs in fp32.
The weights are cast rather than run under autocast because a static cache takes its dtype from
the first keys it stores: under autocast the rotary embedding of GPT-NeoX (transformers 5.17)
leaves the keys in fp32 and the values in bf16, and the cache refuses the values (seen on an
H200). ``num_loops=k`` runs a recursive meshlm model's shared core k times instead of the
trained K.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass

import torch

from meshlm.errors import MeshLMError
from meshlm.eval.cli import check_num_loops, load_model_dir
from meshlm.eval.scoring import model_max_length, prepare_model
from meshlm.train.hardware import resolve_device

CACHES = ("dynamic", "static")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Sampling:
    """How to pick the next tokens; the defaults are ``meshlm generate``'s (greedy, litgpt's top-k)."""

    max_new_tokens: int = 50
    temperature: float = 0.0
    top_k: int = 50
    top_p: float = 1.0
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise MeshLMError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise MeshLMError(f"--temperature must be 0 (greedy) or positive, got {self.temperature}")
        if self.top_k < 0:
            raise MeshLMError(f"--top-k must be 0 (off) or positive, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise MeshLMError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.seed < 0:
            raise MeshLMError(f"--seed must be non-negative, got {self.seed}")

    def generate_kwargs(self) -> dict:
        """The ``generate`` arguments: sampling ones only when sampling (greedy takes none)."""
        if self.temperature == 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": True,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
        }


def weight_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The dtype ``--dtype`` casts the weights to on ``device`` (``auto``: bf16 on CUDA, fp32 elsewhere)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise MeshLMError(f"--dtype must be auto, {' or '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def generate_ids(
    model,
    input_ids: torch.Tensor,
    sampling: Sampling,
    *,
    num_loops: int | None = None,
    cache: str = "dynamic",
    pad_token_id: int | None = None,
) -> torch.Tensor:
    """Prompt and new token ids, shape (1, prompt + new), of ``model`` (already on its device) continuing ``input_ids``.

    Sampling draws from the global RNG seeded with ``sampling.seed`` inside a fork of it, so the
    caller's RNG state is left as it was.
    """
    if cache not in CACHES:
        raise MeshLMError(f"--cache must be one of {', '.join(CACHES)}, got {cache!r}")
    if num_loops is not None:
        check_num_loops(model, num_loops, "--num-loops")
    limit = model_max_length(model)
    if input_ids.shape[1] + sampling.max_new_tokens > limit:
        raise MeshLMError(
            f"the prompt's {input_ids.shape[1]} tokens + --max-new-tokens {sampling.max_new_tokens} exceed the "
            f"model's {limit} positions; shorten the prompt or lower --max-new-tokens"
        )
    device = next(model.parameters()).device
    kwargs = sampling.generate_kwargs()
    if cache == "static":
        kwargs["cache_implementation"] = "static"
    if num_loops is not None:
        kwargs["num_loops"] = num_loops
    input_ids = input_ids.to(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(sampling.seed)
        return model.generate(input_ids, attention_mask=torch.ones_like(input_ids), pad_token_id=pad_token_id, **kwargs)


def add_subcommand(subparsers) -> None:
    """Register ``meshlm generate``."""
    defaults = Sampling()
    p = subparsers.add_parser(
        "generate",
        help="continue a prompt with a saved model (greedy or sampled)",
        description=(
            "Print the prompt and its continuation by a saved model (a model folder, or a training run "
            "folder holding model/), decoded with the tokenizer saved with it. Greedy at temperature 0, "
            "sampled otherwise; a given --seed repeats its text. A line with the token count and speed "
            "goes to stderr."
        ),
    )
    p.add_argument("model_dir", help="model folder (a training run folder holding model/, or any HF causal LM folder)")
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=defaults.max_new_tokens,
        metavar="N",
        help="tokens to generate at most (fewer if the model ends the text)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=defaults.temperature,
        metavar="T",
        help="0 decodes greedily; above 0 samples from the softmax at temperature T",
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=defaults.top_k,
        metavar="K",
        help="when sampling, draw from the K likeliest tokens only (0: all)",
    )
    p.add_argument(
        "--top-p",
        type=float,
        default=defaults.top_p,
        metavar="P",
        help="when sampling, draw from the smallest set of tokens with probability >= P, in (0, 1]",
    )
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the sampling")
    p.add_argument(
        "--num-loops",
        type=int,
        metavar="K",
        help="run the shared core K times (recursive meshlm models only) (default: the trained K)",
    )
    p.add_argument(
        "--cache",
        choices=CACHES,
        default="dynamic",
        help="KV cache: static is a fixed-size one over which transformers compiles the decode step on CUDA "
        "(faster for long generations only, after its compilation: 12-18 s for a tiny model on an H200)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument(
        "--dtype",
        choices=("auto", *DTYPES),
        default="auto",
        help="dtype of the weights and the KV cache: auto is bfloat16 on CUDA and float32 elsewhere",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run Python files a non-meshlm model folder ships (its auto_map)",
    )
    p.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    """Handler of ``meshlm generate``: print prompt + continuation to stdout, the speed to stderr."""
    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    if not args.prompt:
        raise MeshLMError("--prompt is empty; give the text to continue")
    model, tokenizer = load_model_dir(args.model_dir, args.trust_remote_code)
    device = prepare_model(model, resolve_device(args.device))
    model.to(dtype=weight_dtype(args.dtype, device))
    input_ids = tokenizer(args.prompt, return_tensors="pt").input_ids
    if input_ids.shape[1] == 0:
        raise MeshLMError("the prompt encodes to no tokens; give the text to continue")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if device.type == "cuda" and args.cache == "static":
        print(
            "note: static KV cache on CUDA: the decode step is compiled first",
            file=sys.stderr,
        )
    start = time.perf_counter()
    out = generate_ids(model, input_ids, sampling, num_loops=args.num_loops, cache=args.cache, pad_token_id=pad)
    seconds = time.perf_counter() - start
    print(tokenizer.decode(out[0].tolist(), skip_special_tokens=True))
    new = out.shape[1] - input_ids.shape[1]
    print(f"{new} new tokens in {seconds:.2f} s ({new / seconds:.1f} tokens/s on {device})", file=sys.stderr)
    return 0
