"""Data-parallel newt: DistributedDataParallel (or FSDP2) on CPU processes.

Each process trains the same MLP (with dropout) on its share of scikit-learn's
digits; DDP averages the gradients, and ``process_group`` makes newt average
the losses and reduce its inner products, so every rank learns the same α and
keeps the same parameters. ``--shard`` shards the parameters with FSDP2's
``fully_shard`` instead of replicating them.

    torchrun --standalone --nproc_per_node 2 examples/ddp.py
    torchrun --standalone --nproc_per_node 2 examples/ddp.py --shard
    python examples/ddp.py          # one process: the same code, no group
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import newt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="passes over the data (default 10)")
    parser.add_argument("--lr", type=float, default=1e-4, help="initial α (default 1e-4)")
    parser.add_argument("--batch", type=int, default=64,
                        help="global batch size, split over the ranks (default 64)")
    parser.add_argument("--mode", choices=("closure", "closure_free"), default="closure",
                        help="step(closure) or backward() then step() (default closure)")
    parser.add_argument("--shard", action="store_true", help="FSDP2 fully_shard instead of DDP")
    parser.add_argument("--out", default="ddp_alpha.png", help="figure of α per step (PNG)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="two epochs (for CI)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    epochs = 2 if args.quick else args.epochs

    distributed = "RANK" in os.environ  # started by torchrun
    if distributed:
        dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1

    x, y = load_digits(return_X_y=True)
    data = TensorDataset(torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y))
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, seed=args.seed)
    loader = DataLoader(data, batch_size=args.batch // world, sampler=sampler, drop_last=True)

    torch.manual_seed(args.seed)  # the same initial parameters on every rank
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 10))
    net: nn.Module = model
    if distributed and args.shard:
        from torch.distributed.fsdp import fully_shard

        for layer in (model[0], model[3]):
            fully_shard(layer)
        net = fully_shard(model)
    elif distributed:
        net = nn.parallel.DistributedDataParallel(model)
    torch.manual_seed(args.seed + rank)  # each rank its own dropout masks
    group = dist.group.WORLD if distributed else None
    opt = newt.NewtOptimizer(torch.optim.Adam(net.parameters(), lr=args.lr), process_group=group)

    alphas = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        total = 0.0
        for xb, yb in loader:
            def closure(xb=xb, yb=yb) -> torch.Tensor:
                opt.zero_grad()
                loss = nn.functional.cross_entropy(net(xb), yb)
                loss.backward()
                return loss

            if args.mode == "closure":
                loss = opt.step(closure)
            else:
                loss = closure()
                opt.step()
            total += float(loss)
            alphas.append(opt.alphas[0])
        if rank == 0:
            print(f"epoch {epoch + 1}: mean batch loss (rank 0) {total / len(loader):.4f}, "
                  f"α = {opt.alphas[0]:.3g}")

    flat = torch.cat([(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().reshape(-1)
                      for p in model.parameters()])
    digest = hashlib.sha1(flat.numpy().tobytes()).hexdigest()[:12]
    print(f"rank {rank}: α = {opt.alphas[0]:.6g}, parameter sum {float(flat.sum()):.10g}, "
          f"sha1 {digest}", flush=True)
    if distributed:
        digests: list[str | None] = [None] * world
        dist.all_gather_object(digests, digest)
        if rank == 0:
            print(f"ranks agree: {len(set(digests)) == 1}")
        # Release the DDP/FSDP wrapper (its reducer holds the group) and everything that
        # reaches it (the optimizer, the last closure and the loss's graph) before the group
        # itself, after every rank got here: a gloo group torn down under a live reducer
        # aborts at exit ("terminate called without an active exception").
        del opt, closure, loss, net, model
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.semilogy(alphas)
        ax.set_xlabel("step")
        ax.set_ylabel("α")
        ax.set_title(f"newt(Adam), {'FSDP2' if args.shard else 'DDP'} on {world} process(es)")
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
        print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
