"""``distill export``, ``compare``, ``bench`` and ``plot``: thin calls into :mod:`distill.tools`."""
from __future__ import annotations

import json
from pathlib import Path

from distill.checkpoints import load_tensors
from distill.cli.common import check_fits, load_any, log
from distill.tools import bench as B
from distill.tools import compare as C
from distill.tools import plots
from distill.tools.export import export_checkpoint


def export(args) -> None:
    res = export_checkpoint(args.checkpoint, args.out, args.format, input_shape=args.input_shape,
                            n_check=args.check_inputs, tolerance=args.tolerance, log=log,
                            trust_factory=args.trust_factory)
    runtime = "ONNX Runtime" if args.format == "onnx" else "TorchScript"
    # a traced module is right only where its inputs take the path the check inputs took: say so
    traced = ("; traced, not scripted: branches in forward that depend on the data follow the path these "
              "inputs took" if res.traced else "")
    print(f"{args.format}: wrote {res.path} ({res.bytes / 1e6:.2f} MB, {res.method}); max |{runtime} - PyTorch| = "
          f"{res.max_abs_diff:.2e} over {res.n_checked:,} inputs (limit {res.tolerance:g}), {res.inputs}{traced}")


def compare(args) -> None:
    sides = {p: load_tensors(p)[1] for p in [args.teacher, *args.students]}
    data = load_any(args, recorded=sides[args.teacher])
    for path, side in sides.items():
        check_fits(path, side, data)
    result = C.compare(args.teacher, args.students, data, threads=args.threads, repeats=args.repeats,
                       warmup=args.warmup, onnx=args.onnx, log=log, trust_factory=args.trust_factory)
    files = C.write(result, args.out)
    print(C.markdown(result), end="")
    png = f", {files['png']}" if files["png"] else " (no compare.png: pip install 'distill[plots]' draws it)"
    print(f"wrote {files['md']}, {files['json']}{png}")


def bench(args) -> None:
    results = B.run(quick=args.quick, skip=args.skip, data=args.dataset, train_size=args.train_size,
                    rounds=args.rounds, seeds=args.seeds, precision_epochs=args.precision_epochs,
                    batch_size=args.batch_size, log=log)
    print(B.table(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


def plot(args) -> None:
    if args.figure == "history":
        from distill.tools.history import plot_history

        path = plot_history(args.runs, args.out)
    else:
        path = plots.plot_temperature(args.logits, args.temperatures, args.out)
    print(f"wrote {path}")
