"""``zoo fit`` (one method) and ``zoo compare`` (SVI and/or Gibbs against NUTS): fit, print, write a report."""

from __future__ import annotations

import time

from zoo.cli.amortized import compare_amortized, fit_amortized
from zoo.cli.fitting import check_args, fit, setup, warn_unused


def cmd_fit(args) -> int:
    import inference
    from inference.posterior import Posterior, heldout

    if check_args(args):
        return fit_amortized(args)
    model, out, dataset, data, coords = setup(args)
    if args.method == "em" and not callable(getattr(model, "em", None)):
        raise ValueError(f"--method: model {args.model!r} has no EM baseline; use svi, nuts or map")
    warn_unused(args)
    if args.method == "em":
        start = time.perf_counter()
        params = model.em(data, seed=args.seed)
        post = Posterior.point(model, data, params, method="em", wall_time=time.perf_counter() - start,
                               coords=coords)
    else:
        post = fit(args, args.method, model, data, coords)
    diagnosis = inference.diagnose(post)
    print(diagnosis.summary.round(4).to_string())
    print()
    print(diagnosis)
    sections = {}
    if dataset.splits:
        table = heldout(post, dataset.splits)
        print(f"\nheld-out log predictive density ({args.method}):")
        print(table.round(4).to_string())
        sections["Held-out data (log predictive density)"] = table
    path = inference.write_report(out, {args.method: post}, dataset=dataset, diagnoses={args.method: diagnosis},
                                  title=f"zoo fit {args.model} --method {args.method}", force=args.force,
                                  sections=sections)
    print(f"\nreport written to {path}/")
    return 0


def cmd_compare(args, sbc=None) -> int:
    """SVI vs NUTS on one model and data; ``sbc`` (from ``zoo report --sbc/--sbc-from``): a function returning
    the SBCResult to include, called after the fits."""
    import inference
    from inference.checks.compare import summary_line

    if check_args(args):
        return compare_amortized(args)
    methods = getattr(args, "methods", ("svi", "nuts"))   # `zoo report` compares SVI and NUTS
    model, out, dataset, data, coords = setup(args)
    if "gibbs" in methods and not callable(getattr(model, "gibbs_sweep", None)):
        raise ValueError(f"--methods: gibbs needs a model with conditionals in closed form (gibbs_sweep), which "
                         f"{args.model!r} has not; use svi,nuts")
    warn_unused(args)
    fits = {method: fit(args, method, model, data, coords) for method in methods}   # svi, nuts, gibbs: in this order
    nuts = fits["nuts"]
    first, *rest = [k for k in fits if k != "nuts"]
    table = inference.compare(fits[first], nuts, *(fits[k] for k in rest))
    diagnoses = {k: inference.diagnose(p) for k, p in fits.items()}
    order = [first, "nuts", *rest]
    cols = [c for k in order for c in (f"mean_{k}", f"sd_{k}")] + ["smd", "sd_ratio", "verdict"]
    cols += [f"{c}_{k}" for k in rest for c in ("smd", "sd_ratio", "verdict")]
    print(f"{args.model} on {dataset.name}: " + " vs ".join(f"{k.upper()} ({fits[k].wall_time:.1f}s)" for k in order)
          + "\n")
    print(table[cols].round(3).to_string())
    print()
    print(summary_line(table))
    print()
    for d in diagnoses.values():
        print(d)
    calibration = sbc() if sbc is not None else None
    if calibration is not None:
        print(f"\n{calibration}")
    path = inference.write_report(out, fits, dataset=dataset, comparison=table,
                                  diagnoses=diagnoses, title=f"zoo compare {args.model} ({dataset.name})",
                                  force=args.force, sbc=calibration)
    print(f"\nreport written to {path}/")
    return 0
