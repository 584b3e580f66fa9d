"""The verdict rules of `vitkit reproduce`: pure functions of the measured numbers, fixed here before any number is
seen. Each says "held", "did not hold" or "inconclusive", and why, in words a reader can check against the table.

Noise: two arms differ when their means are further apart than `margin`: twice the standard error of the difference
of means over seeds (at least one point of accuracy); with one seed there is no spread to estimate, and the margin
is a fixed two points (so a one-seed `--quick` run calls only large differences)."""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

HELD, NOT_HELD, INCONCLUSIVE = "held", "did not hold", "inconclusive"
MIN_MARGIN = 0.01  # one point of accuracy: smaller differences are not called, however many seeds agree
ONE_SEED_MARGIN = 0.02  # with a single seed: no spread to estimate


@dataclass(frozen=True)
class Verdict:
    outcome: str  # HELD | NOT_HELD | INCONCLUSIVE
    why: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation; 0 for one value)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("no values: a study's arm has no finished runs")
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def margin(a: Sequence[float], b: Sequence[float]) -> float:
    """How far apart two arms' means must be to count as different (module docstring)."""
    if min(len(a), len(b)) < 2:
        return ONE_SEED_MARGIN
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return max(MIN_MARGIN, 2.0 * se)


def compare(a: Sequence[float], b: Sequence[float]) -> int:
    """+1 when arm a is above arm b beyond the margin, -1 when below, 0 within noise."""
    d = mean_spread(a)[0] - mean_spread(b)[0]
    m = margin(a, b)
    return 1 if d > m else -1 if d < -m else 0


def fmt(values: Sequence[float]) -> str:
    """"91.2 ± 0.4%" (mean ± spread over seeds), or "91.2%" for one seed."""
    m, s = mean_spread(values)
    return f"{100 * m:.1f}%" if len(values) < 2 else f"{100 * m:.1f} ± {100 * s:.1f}%"


# --- the rules, one per study ------------------------------------------------------------------------------------


def data_size(vit: dict[int, list[float]], resnet: dict[int, list[float]]) -> Verdict:
    """Study 1: held if the ResNet beats the ViT on the smallest training set and the ViT-minus-ResNet gap grows from
    the smallest to the largest set in every seed; did not hold if the ViT is ahead on the smallest set beyond noise,
    or the gap shrinks in every seed; otherwise inconclusive."""
    small, large = min(vit), max(vit)
    gaps = {n: [v - r for v, r in zip(vit[n], resnet[n])] for n in vit}
    grows = [g_large > g_small for g_small, g_large in zip(gaps[small], gaps[large])]
    first = compare(resnet[small], vit[small])
    said = (f"at {small} images ResNet {fmt(resnet[small])} vs ViT {fmt(vit[small])}; gap ViT - ResNet "
            f"{100 * mean_spread(gaps[small])[0]:+.1f} -> {100 * mean_spread(gaps[large])[0]:+.1f} points at {large} images")
    if first > 0 and all(grows):
        return Verdict(HELD, f"{said}: the ResNet wins on little data and the ViT closes in with more, in every seed")
    if first < 0:
        return Verdict(NOT_HELD, f"{said}: the ViT is ahead already on the smallest set")
    if not any(grows):
        return Verdict(NOT_HELD, f"{said}: the gap does not grow with data in any seed")
    return Verdict(INCONCLUSIVE, f"{said}: " + ("the ResNet's lead on little data is within noise" if first == 0
                                                else "the gap grows in some seeds only"))


def compute_frontier(hybrid: dict[float, list[float]], vit: dict[float, list[float]]) -> Verdict:
    """Study 2: held if the hybrid beats the ViT at the smallest compute budget beyond noise and their difference at the
    largest budget is within noise or under half the smallest budget's; did not hold if the ViT is ahead at the
    smallest budget beyond noise, or the hybrid's lead grows; otherwise inconclusive."""
    small, large = min(hybrid), max(hybrid)
    d_small = mean_spread(hybrid[small])[0] - mean_spread(vit[small])[0]
    d_large = mean_spread(hybrid[large])[0] - mean_spread(vit[large])[0]
    said = (f"hybrid - ViT {100 * d_small:+.1f} points at the smallest budget, {100 * d_large:+.1f} at the largest "
            f"({large / small:.0f}x the compute)")
    first = compare(hybrid[small], vit[small])
    vanishes = compare(hybrid[large], vit[large]) == 0 or abs(d_large) < 0.5 * abs(d_small)
    if first > 0 and vanishes:
        return Verdict(HELD, f"{said}: the hybrid helps at small compute and the difference fades")
    if first < 0:
        return Verdict(NOT_HELD, f"{said}: the pure ViT is ahead at small compute")
    if first > 0 and d_large > d_small:
        return Verdict(NOT_HELD, f"{said}: the hybrid's lead grows with compute")
    return Verdict(INCONCLUSIVE, f"{said}: " + ("the difference at small compute is within noise" if first == 0
                                                else "the lead shrinks, but not to noise"))


def scaling(base: list[float], depth: list[float], width: list[float], mlp: list[float], patch: list[float]) -> Verdict:
    """Study 3: held if the model with doubled depth beats those with doubled width and doubled MLP width beyond noise,
    and halving the patch beats the base beyond noise; did not hold if doubling the width or the MLP beats doubling
    the depth beyond noise, or smaller patches lose beyond noise; otherwise inconclusive."""
    b = mean_spread(base)[0]
    gains = {k: mean_spread(v)[0] - b for k, v in (("depth", depth), ("width", width), ("MLP", mlp), ("patch", patch))}
    said = "gains over the base: " + ", ".join(f"{k} {100 * g:+.1f}" for k, g in gains.items()) + " points"
    beaten = [k for k, v in (("width", width), ("MLP", mlp)) if compare(v, depth) > 0]
    if beaten:
        return Verdict(NOT_HELD, f"{said}: {' and '.join(beaten)} {'helps' if len(beaten) == 1 else 'help'} more than depth")
    if compare(patch, base) < 0:
        return Verdict(NOT_HELD, f"{said}: smaller patches lose accuracy")
    if all(compare(depth, v) > 0 for v in (width, mlp)) and compare(patch, base) > 0:
        return Verdict(HELD, f"{said}: depth helps most, and smaller patches help")
    return Verdict(INCONCLUSIVE, f"{said}: not every difference is beyond noise")


def position_embeddings(none: list[float], kinds: dict[str, list[float]]) -> Verdict:
    """Study 4: held if no position embedding is below every kind of embedding beyond noise and the kinds lie within
    noise of one another (the best and the worst kind); did not hold if the model without one is below no kind beyond
    noise, or below all of them while the kinds differ beyond noise; otherwise (below some kinds only) inconclusive."""
    means = {k: mean_spread(v)[0] for k, v in kinds.items()}
    best, worst = max(means, key=means.get), min(means, key=means.get)
    said = (f"none {fmt(none)}; " + ", ".join(f"{k} {fmt(v)}" for k, v in kinds.items()))
    none_worse = all(compare(none, v) < 0 for v in kinds.values())
    alike = compare(kinds[best], kinds[worst]) == 0
    if none_worse and alike:
        return Verdict(HELD, f"{said}: no embedding is clearly worse, and the kinds differ little")
    if not any(compare(none, v) < 0 for v in kinds.values()):
        return Verdict(NOT_HELD, f"{said}: no embedding is not clearly worse than any kind")
    if none_worse:
        return Verdict(NOT_HELD, f"{said}: none is worse, but {best} beats {worst} beyond noise")
    return Verdict(INCONCLUSIVE, f"{said}: none is worse than some kinds only")


def token_vs_gap(token: dict[float, list[float]], gap: dict[float, list[float]]) -> Verdict:
    """Study 5: held if class-token and GAP models are within noise of each other at each one's best learning rate,
    and differ beyond noise at the GAP model's best rate (the paper's figure 9: a shared rate hurts the token); did not
    hold if they differ beyond noise at their own best rates; otherwise inconclusive."""
    lr_t = max(token, key=lambda lr: mean_spread(token[lr])[0])
    lr_g = max(gap, key=lambda lr: mean_spread(gap[lr])[0])
    said = (f"best: token {fmt(token[lr_t])} (lr {lr_t:g}), GAP {fmt(gap[lr_g])} (lr {lr_g:g}); at GAP's lr the token "
            f"gets {fmt(token[lr_g])}")
    if compare(token[lr_t], gap[lr_g]) != 0:
        return Verdict(NOT_HELD, f"{said}: they differ at their own best rates")
    if compare(token[lr_g], gap[lr_g]) != 0:
        return Verdict(HELD, f"{said}: equal at their own rates, different at a shared one")
    return Verdict(INCONCLUSIVE, f"{said}: equal at their own rates, and at the shared one too")


def resolution(acc: dict[int, list[float]]) -> Verdict:
    """Study 6: held if the mean accuracy rises with every step up in fine-tuning resolution and the highest beats the
    pre-training resolution beyond noise; did not hold if the highest is below the lowest beyond noise, or the means
    fall with resolution; otherwise inconclusive."""
    sizes = sorted(acc)
    means = [mean_spread(acc[s])[0] for s in sizes]
    said = ", ".join(f"{s} px {fmt(acc[s])}" for s in sizes)
    top = compare(acc[sizes[-1]], acc[sizes[0]])
    if top > 0 and all(b > a for a, b in zip(means, means[1:])):
        return Verdict(HELD, f"{said}: accuracy rises with resolution")
    if top < 0 or all(b < a for a, b in zip(means, means[1:])):
        return Verdict(NOT_HELD, f"{said}: higher resolution does not help")
    return Verdict(INCONCLUSIVE, f"{said}: the rise is within noise or not monotonic")


def axial(axial_acc: list[float], vit_acc: list[float], axial_flops: float, vit_flops: float) -> Verdict:
    """Study 10: held if Axial-ViT beats the ViT of the same width and depth beyond noise and costs more compute; did
    not hold if it is below beyond noise, or costs no more; otherwise inconclusive."""
    said = (f"Axial-ViT {fmt(axial_acc)} for {axial_flops / vit_flops:.2f}x the ViT's training FLOPs, ViT {fmt(vit_acc)}")
    c = compare(axial_acc, vit_acc)
    if axial_flops <= vit_flops:
        return Verdict(NOT_HELD, f"{said}: it costs no more compute")
    if c > 0:
        return Verdict(HELD, f"{said}: more accurate, for more compute")
    if c < 0:
        return Verdict(NOT_HELD, f"{said}: less accurate")
    return Verdict(INCONCLUSIVE, f"{said}: the difference is within noise")


def self_supervised(mpp: dict[int, list[float]], scratch: dict[int, list[float]],
                    supervised: dict[int, list[float]]) -> Verdict:
    """Study 8: held if, at every number of labels, the model pre-trained by masked patch prediction beats the one
    trained from scratch beyond noise and trails the supervised pre-trained one beyond noise; did not hold if it
    beats scratch at no number of labels, or matches or beats supervised pre-training at every number; otherwise
    inconclusive."""
    ks = sorted(mpp)
    said = "; ".join(f"{k} labels/class: MPP {fmt(mpp[k])}, scratch {fmt(scratch[k])}, supervised {fmt(supervised[k])}"
                     for k in ks)
    over = [compare(mpp[k], scratch[k]) > 0 for k in ks]
    under = [compare(mpp[k], supervised[k]) < 0 for k in ks]
    if all(over) and all(under):
        return Verdict(HELD, f"{said}: better than scratch, behind supervised pre-training")
    if not any(over):
        return Verdict(NOT_HELD, f"{said}: no better than training from scratch")
    if not any(under):
        return Verdict(NOT_HELD, f"{said}: not behind supervised pre-training")
    return Verdict(INCONCLUSIVE, f"{said}: the ordering holds at some numbers of labels only")


def inside(seeds: list[dict]) -> Verdict:
    """Study 9, four claims measured on each seed's model: (a) position embeddings are more alike within a row or
    column than across (mean cosine similarity higher by 0.05 at least); (b) a head of the first layer attends
    globally (its mean attention distance at least 75% of uniform attention's); (c) attention distance grows with
    depth (the last layer's mean over heads above the first's); (d) rollout focuses on the object (the share of the
    rollout map on the object's patches above their share of the image). Held if every claim holds in every seed;
    did not hold if some claim fails in every seed; otherwise inconclusive."""
    checks = {
        "2-D grid in the position embeddings": [s["posemb_same_row_or_column"] - s["posemb_other"] >= 0.05 for s in seeds],
        "a global head in layer 1": [max(s["attention_distance"][0]) >= 0.75 * s["uniform_distance"] for s in seeds],
        "distance grows with depth": [statistics.fmean(s["attention_distance"][-1]) > statistics.fmean(s["attention_distance"][0])
                                      for s in seeds],
        "rollout on the object": [s["rollout_on_object"] > s["object_area"] for s in seeds],
    }
    s0 = seeds[0]
    said = (f"similarity same row/column {s0['posemb_same_row_or_column']:.2f} vs other {s0['posemb_other']:.2f}; layer 1's "
            f"widest head {max(s0['attention_distance'][0]):.1f} px of uniform {s0['uniform_distance']:.1f}; mean distance "
            f"layer 1 {statistics.fmean(s0['attention_distance'][0]):.1f} -> last {statistics.fmean(s0['attention_distance'][-1]):.1f} px; "
            f"rollout on the object {100 * s0['rollout_on_object']:.0f}% of its mass for {100 * s0['object_area']:.0f}% of the "
            f"patches (seed 0)")
    status = "; ".join(f"{name}: {sum(v)}/{len(v)} seeds" for name, v in checks.items())
    if all(all(v) for v in checks.values()):
        return Verdict(HELD, f"{said}. {status}")
    if any(not any(v) for v in checks.values()):
        failed = [name for name, v in checks.items() if not any(v)]
        return Verdict(NOT_HELD, f"{said}. {status}: {', '.join(failed)} did not hold")
    return Verdict(INCONCLUSIVE, f"{said}. {status}")


def transfer(pre: dict[int, list[float]], rand: dict[int, list[float]], finetuned: list[float],
             scratch: list[float], other: tuple[str, dict[int, list[float]], dict[int, list[float]]] | None = None
             ) -> Verdict:
    """Study 7: held if the pre-trained features beat a random initialisation's beyond noise at every shot count, the
    advantage at the fewest shots is at least that at the most, and fine-tuning the pre-trained model is not below
    training from scratch beyond noise; did not hold if the pre-trained features beat random ones at no shot count,
    or fine-tuning is below scratch beyond noise; otherwise inconclusive. With a second target (`other`: its name, the
    pre-trained and the random features' few-shot accuracy on it), "held" also needs the pre-trained features to beat
    random ones there at every shot count, and beating them there at none is "did not hold"."""
    ks = sorted(pre)
    gain = {k: mean_spread(pre[k])[0] - mean_spread(rand[k])[0] for k in ks}
    said = (", ".join(f"{k}-shot {fmt(pre[k])} vs {fmt(rand[k])} random" for k in ks) +
            f"; fine-tuned {fmt(finetuned)} vs scratch {fmt(scratch)}")
    wins = [compare(pre[k], rand[k]) > 0 for k in ks]
    tune = compare(finetuned, scratch)
    there = [True]
    if other is not None:
        name, pre2, rand2 = other
        there = [compare(pre2[k], rand2[k]) > 0 for k in sorted(pre2)]
        said += "; on " + name + ": " + ", ".join(f"{k}-shot {fmt(pre2[k])} vs {fmt(rand2[k])}" for k in sorted(pre2))
    if not any(wins):
        return Verdict(NOT_HELD, f"{said}: the pre-trained features are no better than random ones")
    if tune < 0:
        return Verdict(NOT_HELD, f"{said}: fine-tuning the pre-trained model is worse than training from scratch")
    if not any(there):
        return Verdict(NOT_HELD, f"{said}: on {other[0]} the pre-trained features are no better than random ones")
    if all(wins) and gain[ks[0]] >= gain[ks[-1]] and all(there):
        return Verdict(HELD, f"{said}: the representation transfers, the more so the fewer the labels")
    if not all(there):
        return Verdict(INCONCLUSIVE, f"{said}: on {other[0]} the pre-trained features win at some shot counts only")
    return Verdict(INCONCLUSIVE, f"{said}: " + ("the advantage grows with the labels" if all(wins)
                                                else "the pre-trained features win at some shot counts only"))


def denoising(mae: dict[int, list[float]], mpp: dict[int, list[float]], scratch: dict[int, list[float]],
              supervised: dict[int, list[float]]) -> Verdict:
    """Study 11 (beyond the paper): held if, at each of the two smallest numbers of labels, the model pre-trained by
    masked autoencoding beats the one pre-trained by masked patch prediction beyond noise and beats the one trained
    from scratch beyond noise; did not hold if masked patch prediction beats it beyond noise at any number of labels,
    or it beats scratch at none; otherwise inconclusive. Supervised pre-training is reported beside them, not judged
    (it saw every label)."""
    ks = sorted(mae)
    said = "; ".join(f"{k} labels/class: MAE {fmt(mae[k])}, MPP {fmt(mpp[k])}, scratch {fmt(scratch[k])}, "
                     f"supervised {fmt(supervised[k])}" for k in ks)
    few = ks[:2]
    if any(compare(mae[k], mpp[k]) < 0 for k in ks):
        return Verdict(NOT_HELD, f"{said}: masked patch prediction is ahead")
    if not any(compare(mae[k], scratch[k]) > 0 for k in ks):
        return Verdict(NOT_HELD, f"{said}: masked autoencoding is no better than training from scratch")
    if all(compare(mae[k], mpp[k]) > 0 and compare(mae[k], scratch[k]) > 0 for k in few):
        return Verdict(HELD, f"{said}: masked autoencoding ahead of masked patch prediction and of scratch with few labels")
    return Verdict(INCONCLUSIVE, f"{said}: ahead at some numbers of labels only, or within noise")
