"""Best-of-N selectors over several PRM checkpoints: mean +- std over the runs of each selector's
accuracy at each N, from the bon.json files `repirl bon` writes (one per checkpoint).

    for s in 0 1 2; do .venv/bin/repirl bon --checkpoint runs/<trial seed s>/checkpoints/iter_000020 --out runs/bon/$s; done
    .venv/bin/python benchmarks/bon_seeds.py runs/bon/0 runs/bon/1 runs/bon/2 --out benchmarks/results/bon_selectors.md

Each bon.json is one policy's 32 samples of the held-out prompts, scored by that run's PRM; a
selector's accuracy at N is the mean over random N-subsets (repirl_ray.evaluation.best_of_n_curves).
The table also gives each PRM selector's difference from majority vote at each N, per run, so
that "reaches majority" is read against the run-to-run spread.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from repirl_ray.evaluation import format_mean_std_cell


def load(folders: list[str]) -> list[dict]:
    runs = []
    for folder in folders:
        path = Path(folder) / "bon.json"
        if not path.is_file():
            sys.exit(f"error: {path}: not found; run `repirl bon --checkpoint ... --out {folder}` first")
        runs.append(json.loads(path.read_text()))
    ns = [r["n"] for r in runs]
    if any(n != ns[0] for n in ns):
        sys.exit(f"error: the runs' N differ ({ns}); give bon.json files made with the same --n")
    return runs


def table(runs: list[dict]) -> str:
    selectors = [k for k in runs[0]["selectors"] if all(k in r for r in runs)]
    cols = selectors + [f"{k} - majority" for k in selectors if k.startswith("prm_")]
    lines = ["| N | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for i, n in enumerate(runs[0]["n"]):
        cells = [format_mean_std_cell([r[key][i] for r in runs]) for key in selectors]
        cells += [format_mean_std_cell([r[key][i] - r["majority"][i] for r in runs]) for key in selectors if key.startswith("prm_")]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="folders holding a bon.json each")
    parser.add_argument("--out", default="", help="also write the table (markdown) here")
    args = parser.parse_args()
    runs = load(args.folders)
    text = (f"Best-of-N over {len(runs)} runs ({', '.join(args.folders)}): mean +- std over runs; "
            f"{runs[0]['num_prompts']} prompts x {runs[0]['num_samples']} samples each.\n\n" + table(runs) + "\n")
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
