"""The commands about the models themselves: ``zoo list``, ``zoo new NAME`` and ``zoo check MODEL``."""

from __future__ import annotations

from zoo.cli.settings import model_config


def cmd_list(args) -> int:
    import zoo
    from zoo import datasets

    print("models:")
    for name in zoo.list_models():
        try:
            cls = zoo.model_class(name)
        except Exception as e:   # a broken plugin does not hide the other models
            print(f"  {name:10s} (cannot be loaded: {type(e).__name__}: {e})")
            continue
        doc = ((cls.__doc__ or "").strip().splitlines() or [""])[0]
        print(f"  {name:10s} {doc}  [default data: {cls.default_dataset}]")
    print("datasets:")
    for name, desc in datasets.list_datasets().items():
        print(f"  {name:16s} {desc}")
    print("  PATH.csv         any CSV file of numeric columns")
    return 0


def cmd_new(args) -> int:
    """``zoo new NAME``: a new model file and its test (zoo/scaffold.py); never replaces a file."""
    from zoo.scaffold import new_model

    model_file, test_file = new_model(args.name)
    print(f"wrote {model_file}\nwrote {test_file}\nnext: edit the story and the TODOs in {model_file.name}, then\n"
          f"  zoo check {args.name}\n  pytest {test_file} tests/test_contract.py -k {args.name}\n"
          f"  zoo compare {args.name}")
    return 0


def cmd_check(args) -> int:
    """`zoo check MODEL`: run inference.check and print its report; exit status 1 when a check fails."""
    import inference
    import zoo
    from zoo import datasets

    model = zoo.get(args.model, **model_config(args))
    data = datasets.load(args.data, data_dir=args.data_dir).data if args.data else None
    report = inference.check(model, data=data, seed=args.seed)
    print(report)
    return 0 if report.ok else 1
