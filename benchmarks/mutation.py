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
import os
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
    "src/vitkit/objectives/mpp.py": ["tests/test_mpp.py", "tests/test_device.py::test_masked_patch_prediction_runs_on_the_models_device"],
    "src/vitkit/objectives/classification.py": ["tests/test_options.py"] + RUN_TESTS,
    "src/vitkit/train/optim.py": ["tests/test_options.py", "tests/test_train.py::test_schedule_and_decay_groups"] + RUN_TESTS,
    "src/vitkit/train/checkpoint.py": ["tests/test_train.py::test_stop_and_resume_in_process_equals_one_run",
                                       "tests/test_train.py::test_a_kill_between_the_two_renames_keeps_the_last_checkpoint",
                                       "tests/test_train.py::test_checkpoints_are_written_beside_the_run_and_renamed_in",
                                       "tests/test_train.py::test_resume_never_unpickles_the_state_file"],
}


# Mutants judged equivalent (no test could tell them from the original), each with its reason, in
# mutation_equivalent.json (mutant name -> reason). The score leaves them out. Names are mutmut's: they stay while
# the function they sit in is unchanged; after an edit, rerun and review the survivors again.
EQUIVALENT: dict[str, str] = json.loads((HERE / "mutation_equivalent.json").read_text()) if (HERE / "mutation_equivalent.json").exists() else {}


def groups(modules: dict[str, list[str]]) -> list[dict[str, list[str]]]:
    """Modules guarded by the same tests are mutated in one mutmut run (one clean run and one coverage run each)."""
    by_tests: dict[tuple[str, ...], dict[str, list[str]]] = {}
    for module, tests in modules.items():
        by_tests.setdefault(tuple(tests), {})[module] = tests
    return list(by_tests.values())


def run(modules: dict[str, list[str]], timeout: int, log: Path, work: Path) -> dict[str, str]:
    """One mutmut run over `modules` in a fresh copy of the tree at `work`; returns mutant -> status."""
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
    with open(log, "a") as f:  # mutmut's progress, to follow with tail -f
        f.write(f"\n=== {', '.join(modules)}\n")
        f.flush()
        # mutmut forks a child per mutant: one OpenMP thread each (two children on two cores), and no OpenMP
        # pool in the parent to inherit (a forked libgomp pool deadlocks the child)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-m", "mutmut", "run"], cwd=work, timeout=timeout, check=False,
                       stdout=f, stderr=subprocess.STDOUT, env=env)
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work, capture_output=True,
                         text=True, timeout=600).stdout
    status: dict[str, str] = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+): (\w[\w ]*)$", line)
        if m:
            status[m.group(1)] = m.group(2).strip()
    return status


def summarise(status: dict[str, str]) -> dict[str, dict]:
    per_module: dict[str, dict] = {}
    for name, st in status.items():
        module = name.split(".x")[0].split(".xǁ")[0]
        entry = per_module.setdefault(module, {"killed": 0, "survived": [], "equivalent": {}, "timeout": 0, "other": {}})
        if st == "killed":
            entry["killed"] += 1
        elif st == "survived" and name in EQUIVALENT:
            entry["equivalent"][name] = EQUIVALENT[name]
        elif st == "survived":
            entry["survived"].append(name)
        elif st == "timeout":
            entry["timeout"] += 1
        else:  # e.g. "no tests": code no selected test runs
            entry["other"][st] = entry["other"].get(st, 0) + 1
    for entry in per_module.values():  # timeouts apart: on a busy machine slow tests time out, which is no kill
        total = entry["killed"] + len(entry["survived"])
        entry["score"] = entry["killed"] / total if total else None
    return per_module


def write(path: Path, old: dict, modules: dict, status: dict, partial: bool, machine, hardware,
          measured: bool = True) -> tuple[dict, dict]:
    """Scores of `status`, written atomically to `path` (after every group: a run cut short keeps what it judged)."""
    res = summarise(status)
    total = {k: sum(len(e[k]) if isinstance(e[k], (list, dict)) else e[k] for e in res.values())
             for k in ("killed", "survived", "equivalent", "timeout")}
    total["score"] = total["killed"] / max(1, total["killed"] + total["survived"])
    tmp_path = path.with_suffix(".tmp")
    tmp_path.write_text(json.dumps({"plan": {**old.get("plan", {}), **modules} if partial else modules,
                                    "total": total, "modules": res, "status": status,
                                    "machine": machine() if measured else old.get("machine"),
                                    "hardware": hardware() if measured else old.get("hardware")}, indent=2, ensure_ascii=False))
    tmp_path.replace(path)
    return res, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modules", help="comma-separated source files (default: the plan in this script)")
    ap.add_argument("--tests", help="comma-separated tests for --modules (default: the plan's)")
    ap.add_argument("--timeout", type=int, default=4 * 3600, help="seconds for one mutmut run")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (then `cd KEEP/N && mutmut show NAME`)")
    ap.add_argument("--summary", action="store_true", help="no run: recompute the scores of the recorded results "
                    "(after editing mutation_equivalent.json)")
    ap.add_argument("--log", type=Path, default=Path(tempfile.gettempdir()) / "vitkit-mutation.log", help="mutmut's progress")
    args = ap.parse_args()
    if args.modules:
        names = args.modules.split(",")
        modules = {m: args.tests.split(",") if args.tests else PLAN.get(m, ["tests"]) for m in names}
    else:
        modules = PLAN
    sys.path.insert(0, str(HERE))
    from train_recipe import hardware, machine

    path = HERE / "results" / "mutation.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    status = old.get("status", {}) if args.modules else {}  # a partial run updates the modules it ran
    args.log.write_text("")
    with (contextlib.nullcontext(str(args.keep)) if args.keep else tempfile.TemporaryDirectory()) as tmp:
        for i, group in enumerate([] if args.summary else groups(modules)):
            prefixes = tuple(m.removeprefix("src/").removesuffix(".py").replace("/", ".") + "." for m in group)
            status = {k: v for k, v in status.items() if not k.startswith(prefixes)}
            status.update(run(group, args.timeout, args.log, Path(tmp) / str(i)))
            res, total = write(path, old, modules, status, args.modules is not None, machine, hardware)
        if args.summary:
            res, total = write(path, old, old.get("plan", modules), old.get("status", {}), False, machine, hardware, measured=False)
    for module, e in sorted(res.items()):
        score = f"{e['score']:.0%}" if e["score"] is not None else "-"
        print(f"{module}: score {score}  killed {e['killed']}  survived {len(e['survived'])}  "
              f"equivalent {len(e['equivalent'])}  timeout {e['timeout']}  other {e['other']}")
    print(f"total: score {total['score']:.1%}  killed {total['killed']}  survived {total['survived']}  "
          f"equivalent {total['equivalent']}  timeout {total['timeout']}")


if __name__ == "__main__":
    main()
