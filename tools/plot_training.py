"""Learning curves of a training or bootstrapping run, from its CSV logs.

    python tools/plot_training.py runs/boot                      # writes runs/boot/curves.png
    python tools/plot_training.py runs/boot --output docs/images/bootstrap_curves.png \
        --columns loss,kept_tracks,eval:average_jaccard

A run directory (`bootstap_ros_training.supervised`, `bootstap-train-bootstrap`) holds `train_log.csv` and
`eval_log.csv`, one row per logged step. Every numeric column of either file is drawn
against `step` in a panel of its own, named by its column (the evaluation's prefixed
`eval:`): columns a newer trainer adds appear without any change here, and empty cells,
text and a missing or empty file are skipped. `make training-curves RUN=DIR` runs it.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

LOGS = (("train_log.csv", ""), ("eval_log.csv", "eval:"))
Series = Tuple[List[float], List[float]]


def _number(text) -> Optional[float]:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def read_series(run: Path) -> Dict[str, Series]:
    """{panel name: (steps, values)} of every column with at least one number, in file
    order: train_log.csv's columns, then eval_log.csv's prefixed `eval:`."""
    series: Dict[str, Series] = {}
    for filename, prefix in LOGS:
        path = run / filename
        if not path.is_file():
            continue
        with open(path, newline="") as file:
            reader = csv.DictReader(file)
            columns = [c for c in (reader.fieldnames or []) if c and c != "step"]
            found: Dict[str, Series] = {prefix + c: ([], []) for c in columns}
            for row in reader:
                step = _number(row.get("step"))
                if step is None:
                    continue
                for column in columns:
                    value = _number(row.get(column))
                    if value is not None:
                        found[prefix + column][0].append(step)
                        found[prefix + column][1].append(value)
        series.update({name: data for name, data in found.items() if data[0]})
    return series


def plot(series: Dict[str, Series], output: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(series)
    columns = min(3, count)
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 2.8 * rows), squeeze=False)
    for ax, (name, (steps, values)) in zip(axes.flat, series.items()):
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3,
                color="tab:red" if name.startswith("eval:") else "tab:blue")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[count:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=90)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="run directory with train_log.csv and/or eval_log.csv")
    parser.add_argument("--output", type=Path, help="PNG to write (default: RUN/curves.png)")
    parser.add_argument("--columns", help="comma list of panels to draw, in this order "
                        "(names as drawn: loss, kept_tracks, eval:average_jaccard, ...); default: all")
    parser.add_argument("--title", help="figure title (default: the run directory)")
    args = parser.parse_args(argv)

    series = read_series(args.run)
    if not series:
        raise SystemExit(f"{args.run}: no numbers in train_log.csv or eval_log.csv")
    if args.columns:
        wanted = [c.strip() for c in args.columns.split(",") if c.strip()]
        missing = [c for c in wanted if c not in series]
        if missing:
            raise SystemExit(f"{args.run}: no column(s) {', '.join(missing)}; "
                             f"there are: {', '.join(series)}")
        series = {name: series[name] for name in wanted}
    output = args.output or args.run / "curves.png"
    plot(series, output, args.title or str(args.run))
    print(f"wrote {output}: {', '.join(series)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
