"""Chains in forked worker processes, one per CPU core: ``run_nuts`` and ``run_gibbs`` run ``chain(c, position)``
for every chain here; results are identical to running them one after another."""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from typing import Mapping

import torch

from inference.validation import check_setting


def check_chain_settings(num_samples, warmup_steps, num_chains, max_tree_depth, target_accept,
                         chain_method) -> float:
    """The settings every chain driver (``run_nuts``, ``run_gibbs``) shares, checked; returns ``target_accept``."""
    for name, value, low in (("num_samples", num_samples, 1), ("warmup_steps", warmup_steps, 0),
                             ("num_chains", num_chains, 1), ("max_tree_depth", max_tree_depth, 1)):
        check_setting(value, name, kind="int", minimum=low)
    target_accept = check_setting(target_accept, "target_accept", kind="probability")
    if chain_method not in ("parallel", "sequential"):
        raise ValueError(f"chain_method: expected 'parallel' or 'sequential', got {chain_method!r}")
    return target_accept


def num_workers(num_chains: int, chain_method: str, data) -> int:
    if chain_method == "sequential" or num_chains == 1 or "fork" not in mp.get_all_start_methods():
        return 1
    on_gpu = any(t.is_cuda for t in _tensors(data)) or (torch.cuda.is_available() and torch.cuda.is_initialized())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if on_gpu else max(1, min(num_chains, cores))


def _tensors(data):
    if torch.is_tensor(data):
        return [data]
    values = data.values() if isinstance(data, Mapping) else data if isinstance(data, (list, tuple)) else []
    return [v for v in values if torch.is_tensor(v)]


def parallel(chain, num_chains: int, workers: int):
    """Run ``chain(c, position)`` for every chain in forked processes, ``workers`` at a time.

    Forking (not spawning) means the model needs no pickling; each worker uses one torch thread, as
    PyTorch's own DataLoader workers do. Results come back through pipes.
    """
    ctx = mp.get_context("fork")
    results = [None] * num_chains
    for first in range(0, num_chains, workers):
        batch = list(range(first, min(num_chains, first + workers)))
        procs = []
        for position, c in enumerate(batch):
            receiver, sender = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker, args=(chain, c, position, sender), daemon=True)
            proc.start()
            sender.close()
            procs.append((c, proc, receiver))
        for c, proc, receiver in procs:
            try:
                status, payload = receiver.recv()
            except EOFError:
                status, payload = "error", f"worker for chain {c} died (exit code {proc.exitcode})"
            proc.join()
            if status == "interrupt":   # Ctrl-C reached the worker first: the parent's own interrupt follows
                for _, other, _ in procs:
                    other.terminate()
                raise KeyboardInterrupt
            if status == "error":
                for _, other, _ in procs:
                    other.terminate()
                raise RuntimeError(f"NUTS chain {c} failed: {payload}")
            draws, stats, adapted = payload
            results[c] = ({k: torch.from_numpy(v) for k, v in draws.items()}, stats, adapted)
    return results


def _worker(chain, c, position, sender):
    torch.set_num_threads(1)
    try:
        draws, stats, adapted = chain(c, position)
        # numpy, not tensors: torch would share tensor memory through file descriptors that die with us
        sender.send(("ok", ({k: v.numpy() for k, v in draws.items()}, stats, adapted)))
    except KeyboardInterrupt:
        sender.send(("interrupt", None))
    except BaseException as e:  # report, do not hang the parent
        sender.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        sender.close()
