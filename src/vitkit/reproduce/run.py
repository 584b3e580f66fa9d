"""`vitkit reproduce`: plan every study's runs, run them (finished ones reused, a half-done one resumed) under one
progress bar, summarise each study, decide its verdict by its fixed rule, draw its figure, and write results.json and
a self-contained report.html (figures embedded, the verdict table on top)."""
from __future__ import annotations

import base64
import html
import json
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vitkit.reproduce.plan import Budget, RunSpec, Study, execute, finished, link, run_dir
from vitkit.reproduce.verdicts import HELD, INCONCLUSIVE, NOT_HELD, Verdict

RESULTS, REPORT = "results.json", "report.html"


def select(only: str | list[str] | None = None) -> list[Study]:
    """The studies to run, in the paper's order; `only` names some ("data-size,posemb"), else ValueError listing them."""
    from vitkit.reproduce.studies import STUDIES

    if not only:
        return list(STUDIES.values())
    names = [n.strip() for n in (only.split(",") if isinstance(only, str) else only) if n.strip()]
    bad = [n for n in names if n not in STUDIES]
    if bad:
        raise ValueError(f"--only {','.join(bad)}: no such study; the studies are {', '.join(STUDIES)}")
    return [STUDIES[n] for n in STUDIES if n in names]


def plan(studies: list[Study], budget: Budget) -> list[tuple[Study, list[RunSpec]]]:
    """Each study with its runs (a run that starts from another's checkpoint comes after it)."""
    return [(s, link(s.runs(budget))) for s in studies]


def planned_flops(spec: RunSpec) -> float:
    """The run's training compute before it runs: FLOPs per image x steps x batch (the progress bar's unit)."""
    from vitkit.recipes import build
    from vitkit.reproduce.studies import flops_per_image

    # a run that starts from another's checkpoint has that run's architecture (its model.* overrides)
    over = tuple(o for o in (*spec.init_model, *spec.overrides) if not o.startswith(("train.seed=", "train.log_every=")))
    cfg = build(spec.recipe, list(spec.overrides))
    return float(flops_per_image(spec.recipe, over)) * cfg.train.steps * cfg.train.batch_size


def reproduce(out: str | Path, quick: bool = False, only: str | list[str] | None = None, seeds: int = 0) -> dict:
    """Run the studies into `out` (DIR/runs/STUDY/KEY per run), write DIR/results.json and DIR/report.html, and return
    the results. Rerunning with the same DIR reuses finished runs, so a killed reproduce loses at most the run it was
    in."""
    from vitkit import progress, runtime

    out = Path(out)
    budget = Budget(quick=quick, seeds=seeds)
    chosen = plan(select(only), budget)
    todo = [(s, r) for s, runs in chosen for r in runs if finished(out, r) is None]
    total = sum(planned_flops(r) for _, r in todo)
    n_runs = sum(len(runs) for _, runs in chosen)
    print(f"vitkit reproduce: {len(chosen)} studies, {n_runs} runs ({n_runs - len(todo)} finished already), "
          f"{'quick' if quick else 'full'}, {budget.n_seeds} seed(s) -> {out}")
    bar = progress.bar(total=total / 1e12, desc="reproduce", unit="TFLOP",
                       bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} TFLOP [{elapsed}<{remaining}] {postfix}")
    started = time.time()
    failures: dict[tuple[str, str], str] = {}
    for i, (study, spec) in enumerate(todo):
        bar.set_postfix_str(f"{study.name}: {spec.key} (run {i + 1}/{len(todo)})")
        try:
            execute(out, spec)
        except Exception as err:  # noqa: BLE001 - a run that fails (diverges, say) is its study's finding, not the plan's end
            failures[(study.name, spec.key)] = f"{type(err).__name__}: {err}"
            tqdm.write(f"reproduce: {study.name}/{spec.key} failed: {err}", file=sys.stderr)
        bar.update(planned_flops(spec) / 1e12)
    bar.close()
    results = {"mode": "quick" if quick else "full", "seeds": budget.n_seeds, "machine": runtime.describe(),
               "wall_s": time.time() - started, "studies": {}}
    for study, runs in chosen:
        results["studies"][study.name] = conclude(out, study, runs, budget, failures)
    # the runs' own training time, whichever invocation made them (a resumed plan's wall_s counts only its own part)
    done = [m for _, runs in chosen for r in runs if (m := finished(out, r)) is not None]
    results["runs"] = {"planned": n_runs, "finished": len(done),
                       "train_s": sum(float(m.get("train_wall_s") or 0.0) for m in done)}
    from vitkit.atomic import write_json

    write_json(out / RESULTS, results)
    write_report(out, results)
    return results


def conclude(out: Path, study: Study, runs: list[RunSpec], budget: Budget,
             failures: dict[tuple[str, str], str] | None = None) -> dict[str, Any]:
    """A study's numbers, verdict and figure from its finished runs; with a run missing (failed), inconclusive, naming
    the runs and why they failed."""
    got = [(r, finished(out, r)) for r in runs]
    got = [(r, None if m is None else {**m, "run_dir": str(run_dir(out, r.study, r.dirname))}) for r, m in got]
    entry = {"title": study.title, "source": study.source, "claim": study.claim, "setup": study.setup(budget),
             "rule": " ".join(study.rule.split()), "runs": [r.dirname for r in runs]}
    missing = [r.key for r, m in got if m is None]
    if missing:
        why = "; ".join(f"{k}: {(failures or {}).get((study.name, k), 'did not finish')}" for k in missing)
        return {**entry, "numbers": {}, "figure": None,
                "verdict": Verdict(INCONCLUSIVE, f"runs that did not finish (their train.log under "
                                                 f"{out / 'runs' / study.name}): {why}").to_dict()}
    numbers = study.summarize(got)
    verdict = study.decide(numbers)
    fig = study.figure(numbers, out / f"{study.name}.png")
    return {**entry, "numbers": _jsonable(numbers), "verdict": verdict.to_dict(), "figure": fig.name}


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def machine_line(machine: dict) -> str:
    """"AMD EPYC (native-bf16), 2 cores, 2 threads, torch 2.14.1" from runtime.describe()."""
    cpu = machine.get("cpu") or {}
    accel = ", ".join(map(str, machine.get("accelerators") or ())) or "no GPU"
    return (f"{cpu.get('model', 'an unknown CPU')} ({cpu.get('kind', '?')}), {machine.get('cores', '?')} cores, "
            f"{machine.get('threads', '?')} threads, {accel}, torch {machine.get('torch', '?')}")


def runs_line(results: dict) -> str:
    """"171 runs, 98 min of training in all (this invocation: 4 min)" from results.json."""
    runs = results.get("runs") or {}
    wall = f"{results['wall_s'] / 60:.0f} min"
    if not runs:
        return wall
    return (f"{runs['finished']} of {runs['planned']} runs finished, {runs['train_s'] / 60:.0f} min of training in all "
            f"(this invocation: {wall})")


COLOURS = {HELD: "#2e7d32", NOT_HELD: "#c62828", INCONCLUSIVE: "#8d6e00"}


def write_report(out: Path, results: dict) -> Path:
    """report.html: one file, figures embedded (base64 PNG), the verdict table on top, one section per study."""
    from vitkit.atomic import write_text

    esc = html.escape
    rows, sections = [], []
    for name, s in results["studies"].items():
        v = s["verdict"]
        colour = COLOURS[v["outcome"]]
        rows.append(f"<tr><td><a href='#{esc(name)}'>{esc(s['title'])}</a></td><td>{esc(s['source'])}</td>"
                    f"<td style='color:{colour};font-weight:bold'>{esc(v['outcome'])}</td><td>{esc(v['why'])}</td></tr>")
        png = base64.b64encode((out / s["figure"]).read_bytes()).decode() if s["figure"] else ""
        sections.append(
            f"<section id='{esc(name)}'><h2>{esc(s['title'])} <small>({esc(s['source'])})</small></h2>"
            f"<p><b>The paper:</b> {esc(s['claim'])}</p><p><b>Here:</b> {esc(s['setup'])}</p>"
            f"<p><b>Rule (fixed before the runs):</b> {esc(s['rule'])}</p>"
            + (f"<img alt='{esc(s['title'])}' src='data:image/png;base64,{png}'>" if png else "<p>(no figure)</p>") +
            f"<p><b>Verdict: <span style='color:{colour}'>{esc(v['outcome'])}</span></b> - {esc(v['why'])}</p>"
            f"<details><summary>numbers</summary><pre>{esc(json.dumps(s['numbers'], indent=1))}</pre></details></section>")
    cpu = esc(machine_line(results["machine"]))
    page = f"""<!doctype html><html><head><meta charset='utf-8'><title>vitkit reproduce</title><style>
body{{font-family:sans-serif;max-width:1000px;margin:2em auto;line-height:1.4}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}} img{{max-width:100%}} section{{margin-top:2em}}
</style></head><body><h1>"An Image is Worth 16x16 Words", in miniature</h1>
<p>{esc(results['mode'])} run, {results['seeds']} seed(s), {runs_line(results)} on {cpu}. Each verdict follows
a rule written in vitkit's code (vitkit/reproduce/verdicts.py) before any number was seen; "inconclusive" is an
answer too.</p>
<table><tr><th>study</th><th>paper</th><th>verdict</th><th>why</th></tr>{''.join(rows)}</table>
{''.join(sections)}</body></html>"""
    return write_text(out / REPORT, page)
