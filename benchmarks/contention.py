"""Training under CPU contention: the quickstart recipe for a fixed number of steps, alone and while another
process keeps one core busy, under OpenMP settings: vitkit's defaults (the `vitkit` command sets
OMP_NUM_THREADS to the cores available and OMP_WAIT_POLICY=PASSIVE where the user has not), PyTorch's own
defaults (GNU OpenMP threads spin while they wait), and one thread.

    python benchmarks/contention.py                 # about 3 minutes on 2 cores
    python benchmarks/contention.py --steps 60 --reps 1

Writes benchmarks/results/contention.json: training images/s (from the run's metrics.json, training time only)
per setting and condition, and the slowdown under contention. Run it alone: other work on the cores is the
thing being measured.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
SETTINGS = {  # name: environment changes (None: remove the variable)
    "vitkit defaults (PASSIVE)": {"OMP_NUM_THREADS": None, "OMP_WAIT_POLICY": None, "VITKIT_THREAD_DEFAULTS": None},
    "PyTorch defaults (spinning)": {"OMP_NUM_THREADS": None, "OMP_WAIT_POLICY": None, "VITKIT_THREAD_DEFAULTS": "0"},
    "1 thread": {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": None, "VITKIT_THREAD_DEFAULTS": None},
    "GOMP_SPINCOUNT=10000": {"OMP_NUM_THREADS": None, "OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "10000", "VITKIT_THREAD_DEFAULTS": "0"},
    "GOMP_SPINCOUNT=100000": {"OMP_NUM_THREADS": None, "OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "100000", "VITKIT_THREAD_DEFAULTS": "0"},
}


def run_once(env_changes: dict, steps: int, busy: bool) -> float:
    env = dict(os.environ)
    for k, v in env_changes.items():
        env.pop(k, None) if v is None else env.__setitem__(k, v)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        time.sleep(0.5 if busy else 0)
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "vitkit", "train", "--recipe", "quickstart", "--out", f"{tmp}/run",
                   "--set", f"train.steps={steps}", "--set", "train.progress=false", "--set", "train.eval_every=100000"]
            subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=1800)
            return json.loads(Path(f"{tmp}/run/metrics.json").read_text())["train_img_per_s"]
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--only", help="comma-separated setting names (default: all)")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from train_recipe import hardware, machine

    rows = []
    for name, changes in SETTINGS.items():
        if args.only and name not in args.only.split(","):
            continue
        alone, busy = [], []
        for _ in range(args.reps):  # interleaved: drift hits both conditions alike
            alone.append(run_once(changes, args.steps, busy=False))
            busy.append(run_once(changes, args.steps, busy=True))
        row = {"setting": name, "alone_img_per_s": statistics.median(alone), "contended_img_per_s": statistics.median(busy),
               "alone_runs": alone, "contended_runs": busy}
        row["slowdown"] = row["alone_img_per_s"] / row["contended_img_per_s"]
        rows.append(row)
        print(f"{name:<30} alone {row['alone_img_per_s']:7.0f} img/s   one core busy {row['contended_img_per_s']:7.0f} img/s"
              f"   slowdown {row['slowdown']:.2f}x", flush=True)
    out = {"what": f"quickstart recipe, {args.steps} steps of 64 images, median of {args.reps}", "machine": machine(),
           "hardware": hardware(), "rows": rows}
    (HERE / "results" / "contention.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
