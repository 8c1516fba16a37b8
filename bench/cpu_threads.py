"""CPU training-step time per torch thread count, alternating counts in one process so load drifts hit all.

The model is the demo's (pythia-14m vocab 2048, d=64, 1+2R2+1 mesh, batch 32 x 128). On a busy
machine fewer threads than cores can be faster; ``meshlm.train.hardware.cpu_threads`` follows this.

    PYTHONPATH=src python bench/cpu_threads.py --threads 2,1 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import meshlm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="2,1", help="comma list of thread counts (default: 2,1)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the counts (default: 3)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per count and round (default: 5)")
    args = parser.parse_args()
    cfg = meshlm.MeshLMConfig.from_preset(
        "pythia-14m", vocab_size=2048, hidden_size=64, num_attention_heads=4, layout="1+2R2+1", scheme="mesh"
    )
    model = meshlm.MeshLMForCausalLM(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = torch.randint(0, cfg.vocab_size, (32, 129), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        model(batch[:, :-1], targets=batch[:, 1:]).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for round_ in range(args.rounds):
        for n in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(n)
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            print(f"round {round_} threads {n}: {(time.perf_counter() - start) / args.steps * 1000:.0f} ms/step")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
