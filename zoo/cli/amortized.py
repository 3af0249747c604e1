"""``zoo fit`` and ``zoo compare`` of models whose latents are all local (the VAE): minibatch training, the
test log-likelihood, and the amortization gap against NUTS on a few test points."""

from __future__ import annotations

import os
from types import SimpleNamespace

from zoo.cli.fitting import fit_kwargs, output_folder, warn_unused
from zoo.cli.settings import model_config


def _train_amortized(args):
    """Train (or resume), evaluate on the test split; returns what the report needs."""
    import zoo
    from inference.reporting.plots import plot_history
    from inference.posterior import heldout
    from inference.reporting.report import training_text
    from inference.variational.train import train
    from zoo import datasets

    if getattr(args, "method", "svi") != "svi":
        raise ValueError(f"--method: model {args.model!r} has only local latents and is fitted by amortized SVI "
                         f"(--method svi); `zoo compare {args.model}` runs NUTS on the latents of a few test images")
    model = zoo.get(args.model, **model_config(args), **({"eval_particles": args.eval_particles} if args.eval_particles else {}))
    out, checkpoint = output_folder(args, checkpoint=args.trainer != "lightning")
    dataset = datasets.load(args.data or model.default_dataset, data_dir=args.data_dir)
    data = model.validate(dataset.data)
    warn_unused(args)
    valid = dataset.splits.get("valid")
    split = "test" if "test" in dataset.splits else "valid" if valid is not None else "train"
    kw = dict(valid=valid, elbo=args.elbo, num_particles=args.particles, epochs=args.epochs, batch_size=args.batch_size,
              lr=args.lr or 1e-3, seed=args.seed, progress=not args.quiet)
    if args.trainer == "lightning":
        from inference.variational.lightning import train_lightning

        fit = train_lightning(model, data, devices=args.devices, accelerator="gpu" if args.device == "cuda" else "cpu", **kw)
    else:
        if args.force and not args.resume and os.path.exists(checkpoint):
            os.remove(checkpoint)   # --force: start afresh from a checkpoint that output_folder found to be ours
        fit = train(model, data, patience=args.patience, checkpoint=checkpoint, resume=args.resume, device=args.device, **kw)
    evaluation = dataset.split(split)
    post = fit.posterior(evaluation.data)
    table = heldout(post, {split: post.data})
    held = SimpleNamespace(split=split, nll=table.loc[split, "nll_per_observation"], se=table.loc[split, "se"],
                           text=training_text(fit, table, split, getattr(post.model, "eval_particles", None)))
    return fit, post, evaluation, out, held, {"elbo": plot_history(fit.history)}


def fit_amortized(args) -> int:
    import inference

    fit, post, evaluation, out, held, figures = _train_amortized(args)
    print(f"{args.model} on {evaluation.name}: {held.split} NLL = {held.nll:.3f} ± {held.se:.3f} nats per data point; "
          f"{len(fit.history['epoch'])} epochs in {fit.wall_time:.1f}s")
    path = inference.write_report(out, {"svi": post}, dataset=evaluation, title=f"zoo fit {args.model}",
                                  force=args.force, sections={f"{held.split.capitalize()} log-likelihood": held.text},
                                  figures=figures)
    print(f"\nreport written to {path}/")
    return 0


def compare_amortized(args) -> int:
    import inference
    from inference.checks.amortization import amortization_gap, gap_sections

    fit, post, evaluation, out, held, figures = _train_amortized(args)
    points = post.data[:args.points]
    gap = amortization_gap(post.model, points, **fit_kwargs(args, "nuts"), svi_steps=args.steps, seed=args.seed,
                           progress=not args.quiet)
    print(f"{args.model} on {evaluation.name}: {held.split} NLL = {held.nll:.3f} nats per data point; amortization "
          f"gap on {len(points)} {held.split} data points (nats):\n")
    print(gap)
    path = inference.write_report(out, {"svi": post}, dataset=evaluation, title=f"zoo compare {args.model}",
                                  force=args.force,
                                  sections={f"{held.split.capitalize()} log-likelihood": held.text, **gap_sections(gap)},
                                  figures={**figures, "amortization": gap.figure()})
    print(f"\nreport written to {path}/")
    return 0
