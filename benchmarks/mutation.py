"""Mutation testing of the numeric cores with mutmut: every small change mutmut makes to a module (an
operator, a constant, a condition) should make one of its tests fail. Too slow for every CI run.

    pip install mutmut==3.8.1
    python benchmarks/mutation.py                                  # the modules below, about 1 mutant a second
    python benchmarks/mutation.py --modules src/vitkit/evaluate/fewshot.py --tests tests/test_fewshot.py

Works on a copy of the tree in a temporary directory (mutmut rewrites the sources it mutates), writes
benchmarks/results/mutation.json: per module the mutants killed, survived and timed out, the score (killed over
killed + survived; timeouts reported apart), and the surviving mutants' names (`mutmut show NAME` prints a
diff). Run it alone: on a busy machine tests slow down and mutants time out instead of being judged.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
# module -> the tests that guard it (in-process tests only: a test that starts `python -m vitkit` in a
# subprocess imports the unmutated package, so it could not kill a mutant)
MODEL_TESTS = ["tests/test_models.py", "tests/test_convert.py", "tests/test_converter_bugs.py", "tests/test_converter_parity.py"]
CONVERT_TESTS = ["tests/test_convert.py", "tests/test_converter_bugs.py", "tests/test_converter_parity.py"]
RUN_TESTS = ["tests/test_train.py::test_optimizers_first_step_in_a_run", "tests/test_train.py::test_sigmoid_loss_with_head_bias_init_in_a_run",
             "tests/test_train.py::test_ema_exports_the_average_of_the_trained_weights"]
PLAN = {
    "src/vitkit/models/vit.py": MODEL_TESTS,
    "src/vitkit/models/posemb.py": MODEL_TESTS,
    "src/vitkit/models/resnet.py": MODEL_TESTS,
    "src/vitkit/convert/common.py": CONVERT_TESTS,
    "src/vitkit/convert/google_npz.py": CONVERT_TESTS,
    "src/vitkit/convert/timm.py": CONVERT_TESTS,
    "src/vitkit/convert/hf.py": CONVERT_TESTS,
    "src/vitkit/evaluate/fewshot.py": ["tests/test_fewshot.py"],
    "src/vitkit/objectives/mpp.py": ["tests/test_mpp.py"],
    "src/vitkit/objectives/classification.py": ["tests/test_options.py"] + RUN_TESTS,
    "src/vitkit/train/optim.py": ["tests/test_options.py", "tests/test_train.py::test_schedule_and_decay_groups"] + RUN_TESTS,
    "src/vitkit/train/checkpoint.py": ["tests/test_train.py::test_stop_and_resume_in_process_equals_one_run",
                                       "tests/test_train.py::test_a_kill_between_the_two_renames_keeps_the_last_checkpoint"],
}


def run(modules: dict[str, list[str]], timeout: int, log: Path, keep: Path | None = None) -> dict:
    with (contextlib.nullcontext(str(keep)) if keep else tempfile.TemporaryDirectory()) as tmp:
        work = Path(tmp) / "tree"
        if work.exists():
            shutil.rmtree(work)
        shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns(".git", "runs", "mutants", "__pycache__", "*.egg-info"))
        tests = sorted({t.split("::")[0] for ts in modules.values() for t in ts}
                       | {"tests/conftest.py", "tests/test_convert.py", "tests/test_converter_bugs.py"})  # imported by others
        selection = sorted({t for ts in modules.values() for t in ts})
        cfg = (f"\n[tool.mutmut]\npaths_to_mutate = {json.dumps(list(modules))}\ntests_dir = {json.dumps(tests)}\n"
               f"pytest_add_cli_args_test_selection = {json.dumps(selection)}\nalso_copy = [\"src/vitkit\"]\n")
        with open(work / "pyproject.toml", "a") as f:
            f.write(cfg)
        with open(log, "w") as f:  # mutmut's progress, to follow with tail -f
            subprocess.run([sys.executable, "-m", "mutmut", "run"], cwd=work, timeout=timeout, check=False,
                           stdout=f, stderr=subprocess.STDOUT)
        out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work, capture_output=True,
                             text=True, timeout=600).stdout
    status: dict[str, str] = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+): (\w[\w ]*)$", line)
        if m:
            status[m.group(1)] = m.group(2).strip()
    per_module: dict[str, dict] = {}
    for name, st in status.items():
        module = name.split(".x")[0].split(".xǁ")[0]
        entry = per_module.setdefault(module, {"killed": 0, "survived": [], "timeout": 0, "other": 0})
        if st == "killed":
            entry["killed"] += 1
        elif st == "survived":
            entry["survived"].append(name)
        elif st == "timeout":
            entry["timeout"] += 1
        else:
            entry["other"] += 1
    for entry in per_module.values():  # timeouts apart: on a busy machine slow tests time out, which is no kill
        total = entry["killed"] + len(entry["survived"])
        entry["score"] = entry["killed"] / total if total else None
    return per_module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modules", help="comma-separated source files (default: the plan in this script)")
    ap.add_argument("--tests", help="comma-separated tests for --modules")
    ap.add_argument("--timeout", type=int, default=4 * 3600)
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (then `cd KEEP/tree && mutmut show NAME`)")
    ap.add_argument("--log", type=Path, default=Path(tempfile.gettempdir()) / "vitkit-mutation.log", help="mutmut's progress")
    args = ap.parse_args()
    modules = PLAN if not args.modules else {m: (args.tests or "tests").split(",") for m in args.modules.split(",")}
    sys.path.insert(0, str(HERE))
    from train_recipe import hardware, machine

    res = run(modules, args.timeout, args.log, args.keep)
    for module, e in res.items():
        score = f"{e['score']:.0%}" if e["score"] is not None else "-"
        print(f"{module}: score {score}  killed {e['killed']}  survived {len(e['survived'])}  timeout {e['timeout']}")
    (HERE / "results" / "mutation.json").write_text(json.dumps({"plan": modules, "modules": res, "machine": machine(),
                                                                  "hardware": hardware()}, indent=2))


if __name__ == "__main__":
    main()
