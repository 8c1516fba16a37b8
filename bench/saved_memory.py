"""Bytes a training forward keeps for backward, per MeSH implementation: a memory proxy that runs on CPU.

A ``torch.autograd.graph.saved_tensors_hooks`` pack hook sees every tensor saved for backward
(by eager ops, custom Functions and compiled graphs alike) during
``model(ids, targets=targets, use_cache=False).loss`` under bf16 autocast. Each storage counts
once with its full size (views share storage) and parameters are left out. Units: one MeSH
buffer, batch x seq x B x D fp32 (fp32 is the buffer's dtype under autocast: it starts from the
fp32 embedding output).

Backends: ``eager``; ``aot_eager_decomp_partition`` (inductor's decompositions and min-cut
partitioner, no codegen); ``inductor_partition`` (inductor's own ``partition_fn``: its
joint-graph passes, then the min-cut partitioner, with no-op compilers: what inductor would
save, without compiling kernels); ``inductor`` (a real compile, slow on CPU). All compiled
ones use ``torch.compile(fullgraph=True)``.

Variants: ``base`` recursion; ``old``: the buffer with a batched (1 x B) @ (B x D) matmul read
(commit be7c253); ``new``: the buffer with a multiply-sum read (commit 599d83b); ``function``:
``new`` with one custom autograd.Function per write-read cycle that saves only m', w, r, x;
``mesh``: meshlm's MeshScheme as it is. ``--detail`` lists the tensors each variant saves beyond base.

    PYTHONPATH=src python bench/saved_memory.py
    PYTHONPATH=src python bench/saved_memory.py --device cuda --preset pythia-160m --hidden-size 0 \
        --batch 16 --seq-len 2048 --backends inductor
"""

from __future__ import annotations

import argparse
import collections

import torch
import torch._dynamo
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.backends.debugging import get_nop_func
from torch._inductor.compile_fx import partition_fn, select_decomp_table

from meshlm import MeshLMConfig, MeshLMForCausalLM
from meshlm.model.mesh import MeshScheme


class BufferMesh(MeshScheme):
    """MeSH with a materialised (batch, seq, B, D) buffer and a multiply-sum read (``new``, commit 599d83b)."""

    def route(self, step: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write and read slot weights (batch, seq, B) of one step."""
        return self._route(step, h)

    def write_read(self, buffer: torch.Tensor, w: torch.Tensor, r: torch.Tensor, x: torch.Tensor) -> tuple:
        """(read state, new buffer) of one write-read cycle."""
        buffer = buffer + w.unsqueeze(-1) * x.unsqueeze(-2)
        return (r.unsqueeze(-1) * buffer).sum(-2), buffer

    def begin(self, h_emb, h_pre, record=None):
        empty = h_emb.new_zeros(*h_emb.shape[:-1], self.slots - 1, h_emb.shape[-1])
        buffer = torch.cat((h_emb.unsqueeze(-2), empty), dim=-2)
        router_input = h_pre if self.transition_from_prelude else h_emb
        return self.write_read(buffer, *self.route(0, router_input), h_pre)

    def step(self, t, h, h_core, carry, record=None):
        return self.write_read(carry, *self.route(t + 1, h), h_core)


class OldMesh(BufferMesh):
    """The buffer with one Linear per router and a batched (1 x B) @ (B x D) matmul read (``old``, be7c253)."""

    def route(self, step: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slot weights of each router on its own, as be7c253 computed them."""
        w, r = (torch.softmax(router(h).float(), dim=-1).to(h.dtype) for router in (self.write[step], self.read[step]))
        return w, r

    def write_read(self, buffer: torch.Tensor, w: torch.Tensor, r: torch.Tensor, x: torch.Tensor) -> tuple:
        buffer = buffer + w.unsqueeze(-1) * x.unsqueeze(-2)
        return (r.unsqueeze(-2) @ buffer).squeeze(-2), buffer


class WriteRead(torch.autograd.Function):
    """``m' = m + w x``, ``h = sum_b r_b m'_b``, saving only m', w, r and x for backward."""

    @staticmethod
    def forward(ctx, buffer, w, r, x):
        buffer = buffer + w.unsqueeze(-1) * x.unsqueeze(-2)
        ctx.save_for_backward(buffer, w, r, x)
        return (r.unsqueeze(-1) * buffer).sum(-2), buffer

    @staticmethod
    def backward(ctx, grad_h, grad_buffer):
        buffer, w, r, x = ctx.saved_tensors
        grad_buffer = grad_buffer + r.unsqueeze(-1) * grad_h.unsqueeze(-2)  # dm' = dm_next + r (x) dh
        grad_r = (grad_h.unsqueeze(-2) * buffer).sum(-1)
        grad_w = (grad_buffer * x.unsqueeze(-2)).sum(-1)
        grad_x = (w.unsqueeze(-1) * grad_buffer).sum(-2)
        return grad_buffer, grad_w, grad_r, grad_x


class FunctionMesh(BufferMesh):
    """``new`` with the write-read cycle as one custom autograd.Function (``function``)."""

    def write_read(self, buffer: torch.Tensor, w: torch.Tensor, r: torch.Tensor, x: torch.Tensor) -> tuple:
        return WriteRead.apply(buffer, w, r, x)


VARIANTS = {"base": None, "old": OldMesh, "new": BufferMesh, "function": FunctionMesh, "mesh": MeshScheme}
INDUCTOR_PARTITION = aot_autograd(
    fw_compiler=get_nop_func(),
    bw_compiler=get_nop_func(),
    decompositions=select_decomp_table(),
    partition_fn=partition_fn,
)


def saved_tensors(model: MeshLMForCausalLM, backend: str, ids: torch.Tensor) -> tuple[dict, float]:
    """Storages saved for backward by one training forward ({data_ptr: (bytes, shape, dtype)}) and the loss."""
    torch._dynamo.reset()
    forward = model.forward
    if backend != "eager":
        forward = torch.compile(
            forward, fullgraph=True, backend=INDUCTOR_PARTITION if backend == "inductor_partition" else backend
        )
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def loss() -> torch.Tensor:
        with torch.autocast(ids.device.type, dtype=torch.bfloat16):
            return forward(ids[:, :-1], targets=ids[:, 1:], use_cache=False).loss

    loss().backward()  # compile outside the hook
    seen = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen.setdefault(storage.data_ptr(), (storage.nbytes(), tuple(t.shape), t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        value = loss()
    value.backward()
    model.zero_grad(set_to_none=True)
    return seen, value.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="pythia-14m")
    parser.add_argument("--hidden-size", type=int, default=128, help="0 keeps the preset's")
    parser.add_argument("--layout", default="2+4R2+2")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--backends", default="eager,aot_eager_decomp_partition,inductor_partition")
    parser.add_argument("--detail", action="store_true", help="list what each variant saves beyond base")
    args = parser.parse_args()
    width = {"hidden_size": args.hidden_size} if args.hidden_size else {}
    rows, details = [], []
    for backend in args.backends.split(","):
        base = None
        for variant in args.variants.split(","):
            torch.manual_seed(0)
            scheme = "base" if variant == "base" else "mesh"
            cfg = MeshLMConfig.from_preset(
                args.preset, layout=args.layout, scheme=scheme, max_position_embeddings=args.seq_len, **width
            )
            model = MeshLMForCausalLM(cfg).to(args.device).train()
            if VARIANTS[variant] is not None:
                model.model.scheme.__class__ = VARIANTS[variant]
            ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len + 1), device=args.device)
            seen, loss = saved_tensors(model, backend, ids)
            unit = args.batch * args.seq_len * cfg.num_buffer_slots * cfg.hidden_size * 4
            total = sum(nbytes for nbytes, _, _ in seen.values())
            kinds = collections.Counter((shape, str(dtype), nbytes) for nbytes, shape, dtype in seen.values())
            base = (total, kinds) if variant == "base" else base
            extra = f"{(total - base[0]) / unit:+.2f}" if base else ""
            rows.append(f"| {variant} | {backend} | {total / 2**20:.2f} | {total / unit:.2f} | {extra} | {loss:.6f} |")
            if args.detail and base and variant != "base":
                kinds.subtract(base[1])
                details.append(f"\n{variant} ({backend}), saved beyond base (count x shape dtype MiB):")
                details += [f"  {n:+d} x {s} {d} {b / 2**20:.3f}" for (s, d, b), n in sorted(kinds.items()) if n]
    print(
        f"\n{args.preset} width {cfg.hidden_size} {args.layout}, B = {cfg.num_buffer_slots}, batch {args.batch} x "
        f"{args.seq_len}, {args.device}, torch {torch.__version__}; 1 buffer = {unit / 2**20:.2f} MiB"
    )
    print(
        "| variant | backend | saved MiB | buffers | vs base (buffers) | loss |\n| --- | --- | --- | --- | --- | --- |"
    )
    print("\n".join(rows))
    print("\n".join(details))


if __name__ == "__main__":
    main()
