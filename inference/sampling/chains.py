"""Chains in forked worker processes, one per CPU core: ``run_nuts`` and ``run_gibbs`` run ``chain(c, position)``
for every chain here; results are identical to running them one after another."""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from multiprocessing import connection
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
    """Run ``chain(c, position)`` for every chain in forked processes, ``workers`` at a time: a chain starts
    as soon as a worker is free, so one slow chain does not hold back the chains after it.

    Forking (not spawning) means the model needs no pickling; each worker uses one torch thread, as
    PyTorch's own DataLoader workers do. Results come back through pipes.
    """
    ctx = mp.get_context("fork")
    results = [None] * num_chains
    waiting, free = list(range(num_chains)), list(range(workers))   # chains to start, progress-bar rows
    running = {}   # receiver -> (chain, process, row)
    try:
        while waiting or running:
            while waiting and free:
                c, position = waiting.pop(0), free.pop(0)
                receiver, sender = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_worker, args=(chain, c, position, sender), daemon=True)
                proc.start()
                sender.close()
                running[receiver] = (c, proc, position)
            for receiver in connection.wait(list(running)):
                c, proc, position = running.pop(receiver)
                try:
                    status, payload = receiver.recv()
                except EOFError:
                    status, payload = "error", f"worker for chain {c} died (exit code {proc.exitcode})"
                proc.join()
                free.append(position)
                if status == "interrupt":   # Ctrl-C reached the worker first: the parent's own interrupt follows
                    raise KeyboardInterrupt
                if status == "error":
                    raise RuntimeError(f"NUTS chain {c} failed: {payload}")
                draws, stats, adapted = payload
                results[c] = ({k: torch.from_numpy(v) for k, v in draws.items()}, stats, adapted)
    finally:
        for _, proc, _ in running.values():
            proc.terminate()
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
