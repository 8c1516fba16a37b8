"""Run the diagnostics of spec section 5 over held-out samples, for one model or several side by side.

- :func:`probe_model`: stream batches of token ids through :func:`~meshlm.probe.states.collect_states`
  into a :class:`~meshlm.probe.aggregate.ProbeAccumulator`. Each batch is reduced on the model's
  device as soon as it is computed and only per-sample scalars and small arrays are kept, so the
  memory does not grow with the number of samples (the paper's 500 samples of 2048 tokens on a
  410M model need one forward pass of ``batch_size`` samples plus a few (seq, seq) float64 Gram
  matrices at a time).
- :func:`probe_dir`: load a saved model folder and its tokenizer, cut ``samples`` evenly spaced
  windows of ``seq_len`` tokens from the ``val`` split of the data (the same hash-based split as
  training, so they are held out), or from ``train`` when ``val`` is too small, and write
  ``probe.json`` and the figures.
- :func:`compare_dirs`: several model folders or earlier probe outputs in one figure per diagnostic.

``probe.json`` is the accumulator's result (schema in :mod:`meshlm.probe.aggregate`) with
``label``, ``model`` (layout, scheme, the layout it was probed as, parameter counts),
``data`` (source, split, windows) and ``probe`` (device, precision, batch size, seconds) added.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM

from meshlm.accounting import count
from meshlm.config import INPUT_SCHEMES, Layout, MeshLMConfig, parse_layout
from meshlm.data.shards import TokenShards, eval_batches, load_tokens
from meshlm.data.tokenizers import Tokenizer, tokenizer_from_folder
from meshlm.errors import MeshLMError
from meshlm.eval.cli import resolve_model_dir
from meshlm.model import MeshLMForCausalLM
from meshlm.probe.aggregate import FORMAT, ProbeAccumulator
from meshlm.probe.figures import write_figures
from meshlm.probe.metrics import DEFAULT_SIGMA_FRAC, DEFAULT_SPECTRUM_K
from meshlm.probe.states import backbone_of, collect_states, probe_layout
from meshlm.train.hardware import resolve_device
from meshlm.train.logging import quiet_transformers

PROBE_FILE = "probe.json"
COMPARE_FILE = "compare.json"
DEFAULT_SAMPLES = 500
DEFAULT_BATCH_SIZE = 4
PRECISIONS = ("bf16", "fp32")


def model_info(config: MeshLMConfig, layout: Layout) -> dict[str, Any]:
    """What probe.json records about a model: layout, scheme, the layout probed, parameter counts."""
    mesh = config.scheme_kind == "mesh"
    return {
        "layout": config.layout,
        "scheme": config.scheme,
        "probed_as": str(layout),
        "loops": layout.loops,
        "hidden_size": config.hidden_size,
        "buffer_slots": config.num_buffer_slots if mesh else None,
        "parameters": count(config).as_dict(),
    }


def model_label(info: Mapping[str, Any]) -> str:
    """Short figure label of a model: ``"mesh 3+6R3+3"``, ``"base 4+8R2+4"``, ``"vanilla 24"``."""
    vanilla = parse_layout(info["layout"]).is_vanilla
    return f"vanilla {info['layout']}" if vanilla else f"{info['scheme']} {info['layout']}"


def _device(device: str | torch.device | None, model: torch.nn.Module) -> torch.device:
    """The device to run on: ``device`` if given and usable, else where the model's weights are."""
    return next(model.parameters()).device if device is None else resolve_device(device)


def probe_model(
    model: MeshLMForCausalLM,
    batches: Iterable[torch.Tensor],
    *,
    kernel: str = "rbf",
    sigma_frac: float = DEFAULT_SIGMA_FRAC,
    linear_cka: bool = False,
    spectrum_k: int = DEFAULT_SPECTRUM_K,
    split: Layout | str | None = None,
    core_outputs: bool | None = None,
    device: str | torch.device | None = None,
    precision: str = "bf16",
    progress: bool = True,
    total: int | None = None,
) -> dict[str, Any]:
    """Diagnostics over ``batches`` of token ids (each (batch, seq)); the accumulator result plus ``model``/``probe``.

    ``core_outputs`` (default: when the scheme combines states after the core, i.e. any recursive
    scheme but ``base`` and the input-injection ones, whose h(t+1) is the core output itself) adds
    the raw core outputs h_m(t) to CKA/spectra and the core's own update magnitude. ``device``
    moves the model there (default: where it is); ``precision`` ``bf16`` autocasts on CUDA, ``fp32``
    never does (CPU always runs fp32). ``total`` is the number of samples, for the progress bar only.
    The model is put in eval mode.
    """
    if precision not in PRECISIONS:
        raise MeshLMError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    config = backbone_of(model).config
    layout = probe_layout(config.parsed_layout, split)
    if core_outputs is None:
        core_outputs = config.scheme_kind not in ("base", *INPUT_SCHEMES) and not config.parsed_layout.is_vanilla
    target = _device(device, model)
    model.to(target).eval()
    accumulator = ProbeAccumulator(kernel=kernel, sigma_frac=sigma_frac, linear_cka=linear_cka, spectrum_k=spectrum_k)
    autocast = precision == "bf16"
    start = time.perf_counter()
    with tqdm(total=total, unit="sample", desc="probe", disable=not progress) as bar, torch.inference_mode():
        for input_ids in batches:
            states = collect_states(model, input_ids, layout, core_outputs=core_outputs, autocast=autocast)
            accumulator.update(states)
            del states  # free this batch's states before the next forward pass
            bar.update(input_ids.shape[0])
    result = accumulator.result()
    result["model"] = model_info(config, layout)
    result["probe"] = {
        "device": str(target),
        "precision": "bf16 autocast" if autocast and target.type == "cuda" else "fp32",
        "seconds": round(time.perf_counter() - start, 3),
    }
    return result


def read_model_config(folder: Path) -> MeshLMConfig:
    """The meshlm config saved in ``folder``; MeshLMError for an unreadable or non-meshlm config."""
    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise MeshLMError(f"cannot read {folder / 'config.json'}: {e}") from None
    if model_type != MeshLMConfig.model_type:
        raise MeshLMError(
            f"{folder} holds a {model_type!r} model, not a meshlm one; the probes need a meshlm model "
            "(convert it with meshlm.convert first)."
        )
    try:
        return MeshLMConfig.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as e:
        raise MeshLMError(f"cannot load the config in {folder}: {e}") from None


def _saved_tokenizer(folder: Path) -> Tokenizer:
    """The tokenizer saved with the model in ``folder``."""
    if not (folder / "tokenizer.json").is_file():
        raise MeshLMError(f"{folder} has no tokenizer.json; the probe tokenizes --data with the model's own tokenizer.")
    return tokenizer_from_folder(folder)


def _load_model(folder: Path) -> MeshLMForCausalLM:
    """The fp32 meshlm model saved in ``folder``, built by meshlm's own classes (no code from the folder runs)."""
    try:
        with quiet_transformers():
            return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, trust_remote_code=False)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
        raise MeshLMError(f"cannot load the model in {folder}: {e}") from None


def heldout_windows(shards: TokenShards, samples: int, seq_len: int) -> tuple[torch.Tensor, str]:
    """``samples`` evenly spaced (samples, seq_len) token windows of ``val``, else of ``train``, and the split."""
    window = seq_len + 1
    available = {split: shards.num_tokens(split) // window for split in ("val", "train") if split in shards.splits}
    for split, windows in available.items():
        if windows >= samples:
            inputs, _ = next(eval_batches(shards.split(split), seq_len, batch_size=samples, max_batches=1))
            return inputs, split
    found = ", ".join(f"{split} {n:,}" for split, n in available.items())
    raise MeshLMError(
        f"the data has too few windows of seq_len+1 = {window} tokens ({found}) for {samples} samples; "
        "use fewer --samples, a shorter --seq-len or more data."
    )


def _check_counts(samples: int, seq_len: int, batch_size: int, config: MeshLMConfig) -> None:
    if samples < 1 or batch_size < 1:
        raise MeshLMError(f"--samples and --batch-size must be positive, got {samples} and {batch_size}.")
    limit = config.max_position_embeddings
    if not 2 <= seq_len <= limit:
        raise MeshLMError(f"--seq-len must be in 2..{limit} (the model's max positions), got {seq_len}.")


def _check_figures_possible() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise MeshLMError("the probe figures need matplotlib: pip install 'meshlm[plot]', or pass --no-figures.")


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def probe_dir(
    model_dir: str | Path,
    data: str,
    samples: int = DEFAULT_SAMPLES,
    seq_len: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    out_dir: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    figures: bool = True,
    device: str | torch.device | None = None,
    label: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Probe a saved model on ``samples`` held-out windows of ``data``; write probe.json and figures to ``out_dir``.

    ``data`` is any ``--data`` source (a shard folder is read as is, text is tokenized once into
    the cache with the model's own tokenizer); ``seq_len`` defaults to the model's max positions;
    ``device`` defaults to CUDA when available. ``options`` are the keyword options of
    :func:`probe_model` (kernel, sigma_frac, linear_cka, spectrum_k, split, core_outputs,
    precision, progress). Returns the result written to probe.json.
    """
    folder = resolve_model_dir(model_dir)
    config = read_model_config(folder)
    seq_len = config.max_position_embeddings if seq_len is None else seq_len
    _check_counts(samples, seq_len, batch_size, config)
    probe_layout(config.parsed_layout, options.get("split"))  # a bad --split fails before any work
    if out_dir is not None and figures:
        _check_figures_possible()
    tokenizer = _saved_tokenizer(folder)
    shards = load_tokens(data, tokenizer, cache_dir=cache_dir)
    inputs, split = heldout_windows(shards, samples, seq_len)
    model = _load_model(folder)
    if split != "val":
        note = f"note: the val split of {data} has fewer than {samples} windows; probing windows of its train split."
        print(note, file=sys.stderr)
    device = resolve_device(device)
    result = probe_model(model, inputs.split(batch_size), device=device, total=samples, **options)
    result["label"] = label or model_label(result["model"])
    result["model"]["dir"] = str(folder)
    result["data"] = {"source": data, "split": split, "tokenizer": tokenizer.name, "samples": samples}
    result["probe"]["batch_size"] = batch_size
    if out_dir is not None:
        out = Path(out_dir).expanduser()
        _write_json(out / PROBE_FILE, result)
        if figures:
            write_figures({result["label"]: result}, out)
    return result


def read_probe_result(folder: Path) -> dict[str, Any]:
    """The probe.json in ``folder``; MeshLMError if it is unreadable or of another format."""
    path = folder / PROBE_FILE
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MeshLMError(f"cannot read {path}: {e}") from None
    if not isinstance(result, dict) or result.get("format") != FORMAT:
        raise MeshLMError(f"{path} is not a meshlm probe result (format {FORMAT!r}); run meshlm probe again.")
    return result


def _unique_labels(results: Sequence[dict[str, Any]], dirs: Sequence[Path]) -> list[str]:
    """Each result's label, with the folder name added where two coincide."""
    names = [r.get("label") or model_label(r["model"]) for r in results]
    names = [f"{n} [{d.name}]" if names.count(n) > 1 else n for n, d in zip(names, dirs, strict=True)]
    if len(set(names)) != len(names):
        raise MeshLMError(f"the folders give clashing labels {names}; name the models with --labels a,b,...")
    return names


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+_-]+", "_", text).strip("_.") or "model"


def compare_dirs(
    dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    labels: Sequence[str] | None = None,
    data: str | None = None,
    figures: bool = True,
    **probe_options: Any,
) -> dict[str, dict[str, Any]]:
    """One figure per diagnostic with every model of ``dirs`` side by side, in ``out_dir``; ``{label: result}``.

    A folder holding probe.json is read as is; any other folder is a model folder, probed
    with ``data`` and ``probe_options`` (the arguments of :func:`probe_dir`; a ``split`` only
    applies to vanilla models) into ``out_dir/NN-LABEL/``. ``compare.json`` lists the labels
    and where each result came from.
    """
    if not dirs:
        raise MeshLMError("--compare needs at least one folder (model folders or probe outputs).")
    if labels is not None and (len(labels) != len(dirs) or len(set(labels)) != len(labels)):
        raise MeshLMError(f"--labels needs {len(dirs)} distinct labels, one per folder, got {list(labels)}.")
    if figures:
        _check_figures_possible()
    out = Path(out_dir).expanduser()
    folders = [Path(d).expanduser() for d in dirs]
    results: list[dict[str, Any]] = []
    sources: list[str] = []
    for i, folder in enumerate(folders):
        if (folder / PROBE_FILE).is_file():
            results.append(read_probe_result(folder))
            sources.append(str(folder / PROBE_FILE))
            continue
        model_folder = resolve_model_dir(folder)
        if data is None:
            raise MeshLMError(f"{folder} is a model folder without {PROBE_FILE}; give --data to probe it.")
        options = dict(probe_options)
        if not read_model_config(model_folder).parsed_layout.is_vanilla:
            options.pop("split", None)
        label = labels[i] if labels is not None else None
        target = out / f"{i + 1:02d}-{_slug(label or folder.name)}"
        results.append(probe_dir(model_folder, data, out_dir=target, figures=False, label=label, **options))
        sources.append(str(target / PROBE_FILE))
    names = list(labels) if labels is not None else _unique_labels(results, folders)
    by_label = dict(zip(names, results, strict=True))
    listing = [{"label": n, "result": s} for n, s in zip(names, sources, strict=True)]
    _write_json(out / COMPARE_FILE, {"format": f"{FORMAT}-compare", "models": listing})
    if figures:
        write_figures(by_label, out)
    return by_label
