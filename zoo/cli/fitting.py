"""What every fitting command shares: the flags checked before anything slow (:func:`check_args`), the
output folder (:func:`output_folder`), model and data (:func:`setup`), and the one mapping from the flags to
the keyword arguments of ``fit_svi``, ``run_nuts`` and ``run_gibbs`` (:func:`fit_kwargs`, :func:`fit`)."""

from __future__ import annotations

import os
import sys

from zoo.cli.settings import model_config

#: defaults of the flags that only some methods use (None in the parser, so a flag the user gave is known)
DEFAULTS = {"steps": 3000, "samples": 1000, "warmup": 500, "chains": 4, "particles": 1, "epochs": 100,
            "batch_size": 100, "elbo": "trace", "trainer": "torch", "devices": 1, "points": 8}
#: fit_svi's first step size (``inference.variational.svi.LR``), given explicitly: SBC records its fit's settings
LR = 0.05


def _unused_flags(args, amortized: bool) -> list[str]:
    """Flags the user gave that the chosen command and method do not use."""
    method = getattr(args, "method", None)
    svi = {"steps", "lr", "guide", "particles", "samples"}
    used = {"svi": svi, "map": svi - {"guide", "samples"}, "nuts": {"samples", "warmup", "chains"}, "em": set(),
            None: svi | {"warmup", "chains"}}[method]
    train = {"epochs", "batch_size", "elbo", "particles", "patience", "checkpoint", "resume", "trainer", "devices",
             "device", "eval_particles", "lr"}
    if amortized:
        used = train | ({"points", "samples", "warmup", "chains", "steps"} if method is None else set())
        if args.trainer == "lightning":
            used -= {"patience", "checkpoint", "resume"}
    if args.trainer != "lightning":
        used.discard("devices")
    flags = ["steps", "lr", "guide", "samples", "warmup", "chains", "particles", *sorted(train - {"lr", "particles"}),
             "points"]
    return [f"--{f.replace('_', '-')}" for f in flags if f not in used and getattr(args, f) not in (None, False)]


def _check_device(device: str | None) -> None:
    if device is None:
        return
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"--device: expected cpu or cuda (cuda:N), got {device!r}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {device!r} asked for, but this machine has no CUDA device that torch can use; "
                         "use --device cpu")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected cpu or cuda (cuda:N), got {device!r}")


def check_args(args) -> bool:
    """Validate the flags of ``fit``/``compare`` before anything slow and note the flags the chosen command
    and method do not use (:func:`warn_unused` prints them). Returns whether the model is fitted by
    minibatch training."""
    import zoo

    model = zoo.get(args.model, **model_config(args))
    amortized = not model.global_sites
    args.unused = _unused_flags(args, amortized)
    _check_device(args.device)
    for flag, value in DEFAULTS.items():
        if getattr(args, flag) is None:
            setattr(args, flag, value)
    return amortized


def warn_unused(args) -> None:
    """One warning line per flag that is not used, printed once the inputs are checked and the fit begins
    (a mistake found earlier stays a single line)."""
    how = f" with --method {args.method}" if getattr(args, "method", None) else ""
    for flag in getattr(args, "unused", ()):
        print(f"zoo: warning: {flag} is not used by `zoo {args.command} {args.model}`{how}; ignored", file=sys.stderr)


def output_folder(args, checkpoint: bool = False):
    """``--out`` (default runs/<model>-<command>) checked before any fitting: never the working folder or an
    ancestor, nor a folder holding the input data; replaced only with --force and only if it is a report.
    With ``checkpoint``, also the checkpoint file (default OUT.ckpt.pt). Returns ``(out, checkpoint)``."""
    from inference.files import check_output_dir, check_output_file

    protect = [p for p in (args.data, args.data_dir) if p and os.path.exists(p)]
    out = check_output_dir(args.out or os.path.join("runs", f"{args.model}-{args.command}"), args.force,
                           name="--out", protect=protect)
    if not checkpoint:
        return out, None
    from inference.variational.train import read_checkpoint

    path = args.checkpoint or f"{out}.ckpt.pt"
    check_output_file(path, args.force or args.resume, name="--checkpoint", protect=protect, is_ours=read_checkpoint,
                      what="a zoo training checkpoint", advice="pass --resume to continue it or --force to start afresh")
    return out, path


def setup(args):
    """The model, the checked output folder, the dataset, the model's data and the coords of its features."""
    import zoo
    from zoo import datasets

    model = zoo.get(args.model, **model_config(args))
    out, _ = output_folder(args)
    dataset = datasets.load(args.data or model.default_dataset, data_dir=args.data_dir)
    data = model.validate(dataset.data)
    coords = {"feature": dataset.feature_names} if dataset.feature_names else {}
    return model, out, dataset, data, coords


def fit_kwargs(args, method: str) -> dict:
    """The keyword arguments of ``method``'s fit from the flags, seed, coords and progress apart: ``run_nuts``'s
    and ``run_gibbs``'s for nuts and gibbs, ``fit_svi``'s for svi and map (the guide "delta")."""
    if method in ("nuts", "gibbs"):
        return dict(num_samples=args.samples, warmup_steps=args.warmup, num_chains=args.chains)
    guide = "delta" if method == "map" else None if args.guide in (None, "model") else args.guide
    return dict(num_steps=args.steps, lr=args.lr or LR, num_samples=args.samples, num_particles=args.particles,
                guide=guide)


def fit(args, method: str, model, data, coords: dict):
    """Fit ``model`` to ``data`` by ``method`` (svi, map, nuts, gibbs) with the flags' settings."""
    import inference

    run = {"svi": inference.fit_svi, "map": inference.fit_svi, "nuts": inference.run_nuts,
           "gibbs": inference.run_gibbs}[method]
    return run(model, data, **fit_kwargs(args, method), seed=args.seed, coords=coords, progress=not args.quiet)
