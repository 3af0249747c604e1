"""``zoo select``: fit a range of model sizes and rank them by PSIS-LOO."""

from __future__ import annotations

import warnings

from zoo.cli.fitting import check_args, fit, setup
from zoo.cli.settings import model_config, model_config_keys

#: the symbols of model sizes in `zoo select` labels (K=3); other sizes are labelled by their flag
SIZE_SYMBOL = {"n_components": "K", "n_states": "S"}


def cmd_select(args) -> int:
    """Fit the model once per size of the range given for one of its counts (--components, --states), rank
    the fits by PSIS-LOO on the marginal log-likelihood, and write select.csv, select.png, khat.png and
    every candidate's netCDF."""
    import inference
    import zoo
    from inference.reporting.plots import plot_khat, plot_select
    from inference.checks.select import check_loo_data
    from inference.thresholds import KHAT_MAX

    keys = model_config_keys(args)
    counts = [dest for dest, key in args.model_flags.items() if key.startswith("n_") and key in keys]
    if not counts:
        raise ValueError(f"model: {args.model!r} has no size setting (n_...) to choose between")
    ranged = [dest for dest in counts if getattr(args, dest) is not None and len(getattr(args, dest)) > 1]
    if len(ranged) != 1:
        flags = [f"--{dest.replace('_', '-')}" for dest in counts]
        raise ValueError(f"{'/'.join(flags)}: give one range of sizes to choose between, e.g. {flags[0]} 1..6")
    dest = ranged[0]
    flag, key, sizes = dest.replace("_", "-"), args.model_flags[dest], getattr(args, dest)
    for other in counts:   # a single size given for another count is fixed
        setattr(args, other, getattr(args, other)[0] if getattr(args, other) is not None else None)
    if check_args(args):
        raise ValueError(f"model: {args.model!r} has only local latents; PSIS-LOO model choice needs posterior "
                         "draws of global parameters")
    _, out, dataset, _, coords = setup(args)
    setattr(args, dest, sizes[0])
    check_loo_data(zoo.get(args.model, **model_config(args)), dataset.data)   # before any fit
    candidates = {}
    for k in sizes:
        setattr(args, dest, k)
        model = zoo.get(args.model, **model_config(args))
        label = f"{SIZE_SYMBOL.get(key, flag)}={k}"
        post = fit(args, args.method, model, model.validate(dataset.data), coords)
        inference.loo(post, name=f"--{flag} {k}")   # fails early where LOO cannot work (e.g. one sequence)
        candidates[label] = post
        print(f"{label}: {args.method.upper()} in {post.wall_time:.1f}s")
    table = inference.select(candidates)
    loos = table.attrs.pop("loo")
    table.attrs["csv"] = "select.csv"
    print(f"\n{args.model} on {dataset.name}, ranked by PSIS-LOO (best first):\n")
    print(table[["elpd_loo", "se", "elpd_diff", "dse", "p_loo", "pareto_k_max", f"pareto_k>{KHAT_MAX}"]].round(2).to_string())
    ranked = {label: candidates[label] for label in table.index}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # ArviZ on a constant quantity (the weight of K=1)
        diagnoses = {label: inference.diagnose(p) for label, p in ranked.items()}
    path = inference.write_report(out, ranked, dataset=dataset, force=args.force, diagnoses=diagnoses,
                                  title=f"zoo select {args.model} --{flag} ({dataset.name})",
                                  sections={"Model choice (PSIS-LOO, best first)": table},
                                  figures={"select": plot_select(table), "khat": plot_khat(loos)})
    print(f"\nreport written to {path}/")
    return 0
