"""VAE benchmarks on real MNIST (see benchmarks/README.md for the recorded numbers and commands).

    # Pyro overhead: seconds per epoch of the zoo VAE trained by inference.variational.train (each loss route)
    # against a plain PyTorch VAE of the same architecture, same data, batch size, optimizer and
    # threads, in one run, epochs interleaved
    python benchmarks/vae_bench.py overhead --data-dir ../shared/datasets --epochs 5 --threads 1 \
        --routes pyro,graph,compiled

    # test NLL on the fixed binarized MNIST with the default recipe (resumable: kill and --resume)
    python benchmarks/vae_bench.py nll --data-dir ../shared/datasets --checkpoint runs/bench/nll.pt
    python benchmarks/vae_bench.py nll --data-dir ../shared/datasets --checkpoint runs/bench/nll.pt --eval-only
    # ... on a slow machine: L_500 on every test image, corrected to L_5000 on a random 1000 of them
    python benchmarks/vae_bench.py nll ... --eval-only --eval-subset 1000 --base-particles 500

Each prints one JSON line with the numbers and the settings; ``nll`` also logs every epoch.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import inference  # noqa: E402,F401  (sets Pyro's module-local parameters)
import zoo  # noqa: E402
from inference.variational.train import load_model, read_checkpoint, train  # noqa: E402
from zoo import datasets  # noqa: E402
from zoo.vae import Decoder, Encoder  # noqa: E402

#: the default recipe (Burda et al. 2015's single-stochastic-layer architecture)
RECIPE = dict(latent_dim=50, hidden=(200, 200))
TRAIN = dict(elbo="trace", num_particles=1, batch_size=100, lr=1e-3, lr_decay=0.1, patience=100)


class PlainVAE(nn.Module):
    """The same networks as zoo.vae, trained with a hand-written PyTorch loss (the peer)."""

    def __init__(self, input_dim, latent_dim, hidden):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = Encoder(input_dim, hidden, latent_dim)
        self.decoder = Decoder(latent_dim, hidden, input_dim)

    def loss(self, x, scale):
        loc, sd = self.encoder(x)
        z = loc + sd * torch.randn_like(loc)
        log_px = -nn.functional.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").sum(-1)
        log_pz = -0.5 * (z ** 2 + math.log(2 * math.pi)).sum(-1)
        log_qz = (-0.5 * ((z - loc) / sd) ** 2 - sd.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        return -scale * (log_px + log_pz - log_qz).sum()


def plain_epoch(net, opt, x, batch_size, gen):
    N = x.shape[0]
    perm = torch.randperm(N, generator=gen)
    for b in range(math.ceil(N / batch_size)):
        idx = perm[b * batch_size:(b + 1) * batch_size]
        opt.zero_grad()
        loss = net.loss(x[idx], N / len(idx))
        loss.backward()
        opt.step()


def overhead(args):
    ds = datasets.load("binarized-mnist", data_dir=args.data_dir)
    x = ds.data
    m = zoo.get("vae", **RECIPE)
    m.validate(x)
    net = PlainVAE(x.shape[1], RECIPE["latent_dim"], RECIPE["hidden"])
    opt = torch.optim.Adam(net.parameters(), lr=TRAIN["lr"])
    routes = args.routes.split(",")
    out = {"task": "overhead", "plain_s_per_epoch": [], "plain_cpu_s_per_epoch": []}
    for route in routes:
        out.update({f"{route}_s_per_epoch": [], f"{route}_cpu_s_per_epoch": [], f"{route}_setup_cpu_s": []})
    for rep in range(args.epochs):   # interleaved, so every side sees the same machine load
        t0, c0 = time.perf_counter(), time.process_time()
        plain_epoch(net, opt, x, TRAIN["batch_size"], torch.Generator().manual_seed(rep))
        out["plain_s_per_epoch"].append(time.perf_counter() - t0)
        out["plain_cpu_s_per_epoch"].append(time.process_time() - c0)
        for route in routes:
            c0 = time.process_time()
            res = train(m, x, epochs=1, batch_size=TRAIN["batch_size"], lr=TRAIN["lr"], seed=rep, loss_route=route,
                        progress=False)
            whole = time.process_time() - c0   # also validation, copy, first trace, building the route
            if res.loss_route != route:
                raise RuntimeError(f"loss route {route!r} was not used (got {res.loss_route!r}); see the log")
            out[f"{route}_s_per_epoch"].append(res.history["seconds"][0])         # the epoch loop alone
            out[f"{route}_cpu_s_per_epoch"].append(res.history["cpu_seconds"][0])
            out[f"{route}_setup_cpu_s"].append(whole - res.history["cpu_seconds"][0])
    # wall seconds of the epoch loop; and CPU seconds of this process, which a shared machine's load
    # disturbs far less (with --threads 1 they are the work done)
    for route in routes:
        out[f"{route}_ratio_median"] = statistics.median(out[f"{route}_s_per_epoch"]) / statistics.median(
            out["plain_s_per_epoch"])
        out[f"{route}_cpu_ratio_median"] = statistics.median(out[f"{route}_cpu_s_per_epoch"]) / statistics.median(
            out["plain_cpu_s_per_epoch"])
    out["load_average"] = os.getloadavg()
    return out


def nll(args):
    ds = datasets.load("binarized-mnist", data_dir=args.data_dir)
    m = zoo.get("vae", **RECIPE)
    m.validate(ds.data)
    ckpt = Path(args.checkpoint)
    if not args.eval_only:
        res = train(m, ds.data, valid=ds.splits["valid"], epochs=args.epochs, seed=args.seed, checkpoint=ckpt,
                    resume=args.resume, progress=False, device=args.device, **TRAIN)
        log.info("training done: %d epochs, best epoch %s, %.0f s", len(res.history["epoch"]), res.best_epoch,
                 res.wall_time)
    payload = read_checkpoint(ckpt)
    load_model(ckpt, m)
    m.to(args.device or "cpu")
    test = ds.splits["test"].to(args.device or "cpu")
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    h = payload["history"]
    out = {"task": "nll", "epochs_run": payload["epoch"], "best_epoch": payload["best_epoch"],
           "best_valid_elbo": payload["best_metric"], "train_wall_seconds": payload["wall_time"],
           "last_train_elbo": h["train"][-1] if h["train"] else None, "eval_particles": args.eval_particles}
    if args.eval_subset is None or args.eval_subset >= len(test):
        ll = m.log_likelihood(test, num_particles=args.eval_particles)
        out.update(test_nll_nats=-float(ll.mean()), test_nll_se=float(ll.std() / math.sqrt(len(ll))))
    else:
        # k = eval_particles on every image is too slow here: L_base on all 10000 test images, plus the
        # paired difference L_k - L_base on a random subset, which corrects L_base to L_k (small variance)
        base = m.log_likelihood(test, num_particles=args.base_particles)
        sub = torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed))[:args.eval_subset]
        diff = m.log_likelihood(test[sub], num_particles=args.eval_particles) - base[sub]
        out.update(base_particles=args.base_particles, test_nll_base_nats=-float(base.mean()),
                   test_nll_base_se=float(base.std() / math.sqrt(len(base))), eval_subset=args.eval_subset,
                   correction_nats=float(diff.mean()), correction_se=float(diff.std() / math.sqrt(len(diff))),
                   test_nll_nats=-float(base.mean() + diff.mean()))
    out["eval_seconds"] = time.perf_counter() - t0
    return out


log = logging.getLogger("vae_bench")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=["overhead", "nll"])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=int, default=None, help="overhead: interleaved epochs (3); nll: planned epochs (1000)")
    p.add_argument("--checkpoint", default="runs/bench/vae-nll.pt")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--eval-only", action="store_true")
    p.add_argument("--eval-particles", type=int, default=5000)
    p.add_argument("--eval-subset", type=int, default=None,
                   help="nll: k = --eval-particles on this many test images only, to correct L_base on all of them")
    p.add_argument("--base-particles", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default=None)
    p.add_argument("--routes", default="pyro,compiled",
                   help="overhead: loss routes of inference.variational.train to time, comma-separated (pyro, graph, compiled)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.epochs = args.epochs or (3 if args.task == "overhead" else 1000)
    out = overhead(args) if args.task == "overhead" else nll(args)
    out.update(torch=torch.__version__, threads=torch.get_num_threads(), machine=platform.machine(),
               device=args.device or "cpu", recipe={**RECIPE, **TRAIN}, argv=sys.argv[1:])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
