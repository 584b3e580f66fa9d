"""`vitkit reproduce`: each verdict rule fed synthetic numbers that must give each of its verdicts, the margin worked by
hand, the planner (run counts, equal compute, dependencies) and a tiny end-to-end run on digits that is resumed."""
import json
import math

import pytest

from vitkit.reproduce import studies, verdicts
from vitkit.reproduce.plan import Budget, finished
from vitkit.reproduce.run import plan, planned_flops, reproduce, select
from vitkit.reproduce.verdicts import HELD, INCONCLUSIVE, NOT_HELD

S3 = lambda m: [m - 0.002, m, m + 0.002]  # noqa: E731 - three seeds tightly around m


def test_margin_by_hand():
    assert verdicts.margin([0.9], [0.8, 0.81]) == 0.02  # one seed: the fixed two points
    # variances 0.0004 and 0: se = sqrt(0.0004 / 3) = 0.011547, twice that 0.023094
    assert verdicts.margin([0.90, 0.92, 0.94], [0.8, 0.8, 0.8]) == pytest.approx(2 * math.sqrt(0.0004 / 3))
    assert verdicts.margin(S3(0.9), S3(0.9)) == 0.01  # tight seeds: never under one point
    assert verdicts.compare(S3(0.93), S3(0.90)) == 1 and verdicts.compare(S3(0.90), S3(0.905)) == 0
    assert verdicts.fmt([0.9, 0.92, 0.94]) == "92.0 ± 2.0%" and verdicts.fmt([0.9]) == "90.0%"


@pytest.mark.parametrize("vit,resnet,want", [
    ({100: S3(0.60), 1000: S3(0.90)}, {100: S3(0.70), 1000: S3(0.88)}, HELD),  # ResNet ahead on little data, ViT catches up
    ({100: S3(0.75), 1000: S3(0.90)}, {100: S3(0.70), 1000: S3(0.88)}, NOT_HELD),  # ViT ahead already
    ({100: S3(0.60), 1000: S3(0.70)}, {100: S3(0.70), 1000: S3(0.85)}, NOT_HELD),  # the gap widens for the ResNet
    ({100: S3(0.695), 1000: S3(0.90)}, {100: S3(0.70), 1000: S3(0.88)}, INCONCLUSIVE),  # the lead is noise
    ({100: [0.60, 0.60, 0.60], 1000: [0.70, 0.55, 0.70]}, {100: S3(0.70), 1000: [0.75, 0.75, 0.75]}, INCONCLUSIVE),
])
def test_data_size_rule(vit, resnet, want):
    assert verdicts.data_size(vit, resnet).outcome == want


@pytest.mark.parametrize("hybrid,vit,want", [
    ({1: S3(0.80), 9: S3(0.90)}, {1: S3(0.74), 9: S3(0.899)}, HELD),
    ({1: S3(0.70), 9: S3(0.90)}, {1: S3(0.74), 9: S3(0.90)}, NOT_HELD),  # the ViT ahead at small compute
    ({1: S3(0.80), 9: S3(0.95)}, {1: S3(0.74), 9: S3(0.85)}, NOT_HELD),  # the lead grows
    ({1: S3(0.745), 9: S3(0.90)}, {1: S3(0.74), 9: S3(0.90)}, INCONCLUSIVE),
    ({1: S3(0.80), 9: S3(0.85)}, {1: S3(0.74), 9: S3(0.80)}, INCONCLUSIVE),  # shrinks, but not to noise
])
def test_compute_rule(hybrid, vit, want):
    assert verdicts.compute_frontier(hybrid, vit).outcome == want


@pytest.mark.parametrize("gains,want", [
    (dict(depth=0.05, width=0.01, mlp=0.0, patch=0.03), HELD),
    (dict(depth=0.01, width=0.05, mlp=0.0, patch=0.03), NOT_HELD),  # width helps more
    (dict(depth=0.05, width=0.01, mlp=0.0, patch=-0.04), NOT_HELD),  # smaller patches lose
    (dict(depth=0.05, width=0.045, mlp=0.0, patch=0.03), INCONCLUSIVE),  # depth and width within noise
    (dict(depth=0.005, width=0.0, mlp=0.0, patch=0.03), INCONCLUSIVE),  # depth's gain is noise
])
def test_scaling_rule(gains, want):
    b = 0.80
    got = verdicts.scaling(S3(b), S3(b + gains["depth"]), S3(b + gains["width"]), S3(b + gains["mlp"]), S3(b + gains["patch"]))
    assert got.outcome == want


@pytest.mark.parametrize("none,kinds,want", [
    (0.80, dict(a=0.90, b=0.905, c=0.895), HELD),
    (0.90, dict(a=0.90, b=0.905, c=0.895), NOT_HELD),  # no embedding is as good
    (0.80, dict(a=0.90, b=0.95, c=0.85), NOT_HELD),  # the kinds differ
    (0.86, dict(a=0.90, b=0.87, c=0.86), INCONCLUSIVE),  # worse than some only
])
def test_position_embedding_rule(none, kinds, want):
    assert verdicts.position_embeddings(S3(none), {k: S3(v) for k, v in kinds.items()}).outcome == want


@pytest.mark.parametrize("token,gap,want", [
    ({1e-3: 0.90, 3e-3: 0.80}, {1e-3: 0.85, 3e-3: 0.90}, HELD),  # equal at own best, token worse at GAP's
    ({1e-3: 0.80, 3e-3: 0.75}, {1e-3: 0.85, 3e-3: 0.90}, NOT_HELD),
    ({1e-3: 0.89, 3e-3: 0.90}, {1e-3: 0.85, 3e-3: 0.90}, INCONCLUSIVE),  # equal at the shared rate too
])
def test_token_gap_rule(token, gap, want):
    t = {lr: S3(v) for lr, v in token.items()}
    g = {lr: S3(v) for lr, v in gap.items()}
    assert verdicts.token_vs_gap(t, g).outcome == want


@pytest.mark.parametrize("acc,want", [
    ({16: 0.80, 24: 0.83, 32: 0.86}, HELD),
    ({16: 0.86, 24: 0.83, 32: 0.80}, NOT_HELD),
    ({16: 0.80, 24: 0.87, 32: 0.86}, INCONCLUSIVE),  # not monotonic
    ({16: 0.80, 24: 0.802, 32: 0.805}, INCONCLUSIVE),  # within noise
])
def test_resolution_rule(acc, want):
    assert verdicts.resolution({r: S3(v) for r, v in acc.items()}).outcome == want


@pytest.mark.parametrize("ax,vit,fa,fv,want", [
    (0.92, 0.88, 2.0, 1.0, HELD), (0.85, 0.88, 2.0, 1.0, NOT_HELD), (0.92, 0.88, 1.0, 1.0, NOT_HELD),
    (0.885, 0.88, 2.0, 1.0, INCONCLUSIVE)])
def test_axial_rule(ax, vit, fa, fv, want):
    assert verdicts.axial(S3(ax), S3(vit), fa, fv).outcome == want


def test_select_names_and_refuses_unknown():
    assert [s.name for s in select("posemb,data-size")] == ["data-size", "posemb"]  # the paper's order
    with pytest.raises(ValueError, match="--only nope: no such study; the studies are data-size"):
        select("nope")


def test_plan_counts_seeds_and_dependencies():
    quick = {s.name: len(r) for s, r in plan(select(), Budget(quick=True))}
    assert quick["data-size"] == 3 * 3 and quick["posemb"] == 5 and quick["token-gap"] == 2 * 3  # one seed each
    three = dict((s.name, r) for s, r in plan(select("data-size,resolution"), Budget(quick=True, seeds=3)))
    assert len(three["data-size"]) == 27
    keys = [r.key for r in three["resolution"]]
    assert len(set(keys)) == len(keys)
    for i, r in enumerate(three["resolution"]):  # a fine-tuning run comes after the run it starts from
        if r.init:
            assert r.init in keys[:i]
    assert Budget().n_seeds == 3 and Budget(quick=True).n_seeds == 1


def test_data_size_arms_get_equal_compute():
    runs = dict((s.name, r) for s, r in plan(select("data-size"), Budget(quick=True)))["data-size"]
    for n in (100, 898):
        spent = {r.tag("arm"): planned_flops(r) for r in runs if r.tag("x") == n}
        assert set(spent) == {"vit", "resnet", "hybrid"}
        per_step = {r.tag("arm"): studies.flops_per_image(r.recipe, tuple(o for o in r.overrides if not o.startswith("train.")))
                    * 64 for r in runs if r.tag("x") == n}
        for arm, f in spent.items():  # equal up to rounding to whole steps (each arm's and the ViT's)
            assert abs(f - spent["vit"]) <= (per_step[arm] + per_step["vit"]) / 2 + 1
        assert len(set(spent.values())) > 1 or n == 100  # they are not simply the same steps


def test_tiny_end_to_end_resumes(tmp_path, monkeypatch):
    # the resolution study (a pre-training run, then three fine-tuning runs that start from it at 16, 24 and 32 px)
    # with 12-step runs: digits, one seed
    real = studies.run_args
    monkeypatch.setattr(studies, "run_args", lambda steps, seed: real(12, seed))
    res = reproduce(tmp_path / "r", quick=True, only="resolution")
    s = res["studies"]["resolution"]
    assert s["verdict"]["outcome"] in (HELD, NOT_HELD, INCONCLUSIVE) and s["verdict"]["why"]
    assert set(s["numbers"]["acc"]) == {"16", "24", "32"}
    runs = {r.key: r for r in plan(select("resolution"), Budget(quick=True))[0][1]}
    d = tmp_path / "r/runs/resolution"
    ft = json.loads((d / runs["finetune-24-s0"].dirname / "config.json").read_text())
    assert ft["model"]["init"] == str(d / runs["pretrain-s0"].dirname) and ft["data"]["image_size"] == 24
    html = (tmp_path / "r/report.html").read_text()
    assert "<table>" in html and "data:image/png;base64," in html and s["verdict"]["outcome"] in html and " cores, " in html
    assert json.loads((tmp_path / "r/results.json").read_text())["studies"]["resolution"]["numbers"] == s["numbers"]
    walls = [json.loads(p.read_text())["train_wall_s"] for p in (tmp_path / "r/runs/resolution").glob("*/metrics.json")]
    assert res["runs"]["finished"] == res["runs"]["planned"] == 4 and res["runs"]["train_s"] == pytest.approx(sum(walls))
    assert "4 of 4 runs finished" in html
    # a second reproduce reuses every finished run, and runs again only the one whose metrics are gone
    kept = d / runs["finetune-16-s0"].dirname / "metrics.json"
    before = kept.stat().st_mtime_ns
    (d / runs["finetune-32-s0"].dirname / "metrics.json").unlink()
    again = reproduce(tmp_path / "r", quick=True, only="resolution")
    assert kept.stat().st_mtime_ns == before
    assert finished(tmp_path / "r", plan(select("resolution"), Budget(quick=True))[0][1][-1]) is not None
    assert again["studies"]["resolution"]["numbers"]["acc"]["16"] == s["numbers"]["acc"]["16"]


def test_cli_list_and_refuses_a_foreign_directory(tmp_path, capsys):
    from vitkit.cli import main

    assert main(["reproduce", "--list", "--quick", "--only", "axial"]) == 0
    assert "axial" in capsys.readouterr().out
    (tmp_path / "mine.txt").write_text("keep")
    assert main(["reproduce", "--quick", "--only", "axial", "--out", str(tmp_path)]) != 0
    assert "holds no reproduce runs" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_a_failed_run_makes_its_study_inconclusive_and_the_plan_goes_on(tmp_path, monkeypatch, capsys):
    import vitkit.reproduce.run as run_mod

    def diverge(root, spec):
        raise ValueError(f"training diverged at step 4 ({spec.key})")

    monkeypatch.setattr(run_mod, "execute", diverge)
    res = reproduce(tmp_path / "r", quick=True, only="axial,posemb")
    for name in ("axial", "posemb"):
        v = res["studies"][name]["verdict"]
        assert v["outcome"] == INCONCLUSIVE and "training diverged at step 4" in v["why"]
    assert "failed" in capsys.readouterr().err
    assert "(no figure)" in (tmp_path / "r/report.html").read_text()


@pytest.mark.parametrize("mpp,scratch,sup,want", [
    ({1: 0.60, 9: 0.85}, {1: 0.50, 9: 0.80}, {1: 0.70, 9: 0.90}, HELD),
    ({1: 0.50, 9: 0.80}, {1: 0.50, 9: 0.80}, {1: 0.70, 9: 0.90}, NOT_HELD),  # no better than scratch
    ({1: 0.75, 9: 0.95}, {1: 0.50, 9: 0.80}, {1: 0.70, 9: 0.90}, NOT_HELD),  # not behind supervised
    ({1: 0.60, 9: 0.80}, {1: 0.50, 9: 0.80}, {1: 0.70, 9: 0.90}, INCONCLUSIVE),  # beats scratch at one size only
])
def test_self_supervised_rule(mpp, scratch, sup, want):
    got = verdicts.self_supervised(*({k: S3(v) for k, v in d.items()} for d in (mpp, scratch, sup)))
    assert got.outcome == want


@pytest.mark.parametrize("mae, mpp, scratch, want", [
    ({1: 0.70, 9: 0.85, 90: 0.95}, {1: 0.60, 9: 0.80, 90: 0.95}, {1: 0.50, 9: 0.75, 90: 0.95}, HELD),  # all labels: a tie
    ({1: 0.70, 9: 0.85, 90: 0.90}, {1: 0.60, 9: 0.80, 90: 0.95}, {1: 0.50, 9: 0.75, 90: 0.95}, NOT_HELD),  # MPP ahead at 90
    ({1: 0.55, 9: 0.76, 90: 0.95}, {1: 0.50, 9: 0.70, 90: 0.95}, {1: 0.55, 9: 0.76, 90: 0.95}, NOT_HELD),  # == scratch
    ({1: 0.70, 9: 0.80, 90: 0.95}, {1: 0.60, 9: 0.80, 90: 0.95}, {1: 0.50, 9: 0.75, 90: 0.95}, INCONCLUSIVE),  # MPP tie at 9
    ({1: 0.70, 9: 0.85, 90: 0.95}, {1: 0.60, 9: 0.80, 90: 0.95}, {1: 0.70, 9: 0.75, 90: 0.95}, INCONCLUSIVE),  # scratch tie at 1
])
def test_denoising_rule(mae, mpp, scratch, want):
    sup = {k: 0.99 for k in mae}
    got = verdicts.denoising(*({k: S3(v) for k, v in d.items()} for d in (mae, mpp, scratch, sup)))
    assert got.outcome == want, got.why
    assert "MAE" in got.why and "supervised 99.0" in got.why


def test_pretraining_plan_fine_tunes_every_arm_from_its_own_pre_training():
    runs = dict((s.name, r) for s, r in plan(select("pretraining"), Budget()))["pretraining"]
    assert len(runs) == 3 * (3 + 3 * 4)  # three seeds: three pre-trainings, four arms at three label counts
    by_key = {r.key: r for r in runs}
    for r in runs:
        if r.init:
            parent = by_key[r.init]
            assert parent.tag("seed") == r.tag("seed") and parent.key.split("-")[0] == r.tag("arm").lower()
    labels = {r.tag("x"): [o for o in r.overrides if o.startswith("data.labels_per_class")] for r in runs if r.tag("x")}
    assert labels == {60: ["data.labels_per_class=60"], 600: ["data.labels_per_class=600"], 6000: []}  # 6000: all
    pre = [r for r in runs if not r.tag("x")]
    assert {r.recipe for r in pre} == {"mae", "mpp-fashion-mnist", "fashion-mnist"}
    assert len({tuple(o for o in r.overrides if o.startswith(("train.steps", "train.batch_size"))) for r in pre
                if r.recipe != "fashion-mnist"}) == 1  # MAE and MPP: the same steps and batch


def inside_seed(grid=0.2, global_head=8.0, last=10.0, on_object=0.6):
    return {"posemb_same_row_or_column": 0.1 + grid, "posemb_other": 0.1, "attention_distance": [[2.0, global_head], [last, last]],
            "uniform_distance": 10.0, "rollout_on_object": on_object, "object_area": 0.4}


@pytest.mark.parametrize("seeds,want", [
    ([inside_seed(), inside_seed()], HELD),
    ([inside_seed(grid=0.0), inside_seed(grid=0.01)], NOT_HELD),  # no 2-D structure in any seed
    ([inside_seed(global_head=5.0), inside_seed()], INCONCLUSIVE),  # a global first-layer head in one seed only
    ([inside_seed(last=4.0)], NOT_HELD),  # distance shrinks with depth
    ([inside_seed(on_object=0.3)], NOT_HELD),  # rollout off the object
])
def test_inside_rule(seeds, want):
    assert verdicts.inside(seeds).outcome == want


@pytest.mark.parametrize("pre,rand,ft,sc,want", [
    ({1: 0.6, 25: 0.85}, {1: 0.3, 25: 0.70}, 0.95, 0.93, HELD),
    ({1: 0.3, 25: 0.70}, {1: 0.3, 25: 0.70}, 0.95, 0.93, NOT_HELD),  # no better than random features
    ({1: 0.6, 25: 0.85}, {1: 0.3, 25: 0.70}, 0.85, 0.93, NOT_HELD),  # fine-tuning hurts
    ({1: 0.4, 25: 0.90}, {1: 0.3, 25: 0.70}, 0.95, 0.93, INCONCLUSIVE),  # the advantage grows with labels
])
def test_transfer_rule(pre, rand, ft, sc, want):
    got = verdicts.transfer({k: S3(v) for k, v in pre.items()}, {k: S3(v) for k, v in rand.items()}, S3(ft), S3(sc))
    assert got.outcome == want


@pytest.mark.parametrize("pre2,rand2,want", [
    ({1: 0.5, 25: 0.8}, {1: 0.2, 25: 0.6}, HELD),
    ({1: 0.2, 25: 0.6}, {1: 0.2, 25: 0.6}, NOT_HELD),  # no better than random on the second target
    ({1: 0.5, 25: 0.6}, {1: 0.2, 25: 0.6}, INCONCLUSIVE),  # better at some shot counts only there
])
def test_transfer_rule_second_target(pre2, rand2, want):
    pre, rand = {1: S3(0.6), 25: S3(0.85)}, {1: S3(0.3), 25: S3(0.70)}  # held on the held-out classes
    got = verdicts.transfer(pre, rand, S3(0.95), S3(0.93),
                            ("digits", {k: S3(v) for k, v in pre2.items()}, {k: S3(v) for k, v in rand2.items()}))
    assert got.outcome == want and "on digits: 1-shot" in got.why


def test_full_transfer_probes_digits_too():
    from vitkit.reproduce.studies import transfer_verdict

    runs = {r.key: r for _, rs in plan(select("transfer"), Budget()) for r in rs}
    assert runs["pretrain-s0"].tag("target") == "digits"
    assert all(r.tag("target") is None for _, rs in plan(select("transfer"), Budget(quick=True)) for r in rs)
    one = {1: [0.6] * 3, 25: [0.85] * 3}
    rand = {1: [0.3] * 3, 25: [0.7] * 3}
    numbers = {"fewshot": {"pre-trained": one, "random init": rand, "pre-trained, digits": rand,
                           "random init, digits": rand}, "finetune": {"fine-tuned": [0.9] * 3, "scratch": [0.9] * 3}}
    assert transfer_verdict(numbers).outcome == NOT_HELD  # the held-out classes alone would say held


def test_data_classes_keeps_and_relabels(tmp_path):
    import torch

    from vitkit.config import DataConfig
    from vitkit.data.datasets import DatasetError, load_dataset

    full = load_dataset(DataConfig(name="digits", val_fraction=0))
    part = load_dataset(DataConfig(name="digits", val_fraction=0, classes="7,2"))
    assert part.classes == ["7", "2"] and len(part.test) == int(((full.test.labels == 7) | (full.test.labels == 2)).sum())
    sevens = full.test.images[full.test.labels == 7]
    assert torch.equal(part.test.images[part.test.labels == 0], sevens)  # class 7 is now 0, its images in order
    with pytest.raises(DatasetError, match="data.classes='7,x': 'x' is not a class of 'digits'"):
        load_dataset(DataConfig(name="digits", classes="7,x"))
    with pytest.raises(DatasetError, match="two different classes"):
        load_dataset(DataConfig(name="digits", classes="7,7"))


def test_zero_head_with_init_starts_a_new_head(tmp_path, capsys):
    # pre-trained on digits 0-4, trained on 5-9 with model.zero_head=true: the head is new (zero), as the paper's
    # fine-tuning does (without it the head is kept, as many classes: tests/test_feedback.py)
    import vitkit
    from vitkit.recipes import build
    from vitkit.train.loop import train

    quick = ["data.val_fraction=0", "train.steps=5", "train.progress=false"]
    train(build("quickstart", [*quick, "data.classes=0,1,2,3,4", "model.zero_head=false"]), out=tmp_path / "pre")
    model = vitkit.load_model(tmp_path / "pre")
    assert model.head.weight.abs().sum() > 0
    cfg = build("quickstart", [*quick, "train.steps=1", "optim.lr=1e-12", f"model.init={tmp_path / 'pre'}",
                               "data.classes=5,6,7,8,9", "model.zero_head=true"])
    train(cfg, out=tmp_path / "ft")
    assert "a new zero-initialised 5-class head" in capsys.readouterr().err
    assert vitkit.load_model(tmp_path / "ft").head.weight.abs().max() < 1e-6  # one step at lr 1e-12 from zero
