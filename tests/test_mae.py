"""Masked autoencoding (He et al. 2021) and its denoising variant: masking, the encoder on visible tokens, the
decoder's unshuffle, the targets, the loss, a real training run, resume, export and the checks on its options."""
import json
import math
import re

import pytest
import torch
from safetensors.torch import load_file

import vitkit
from vitkit.cli import main
from vitkit.config import Config, apply_overrides, validate
from vitkit.objectives.mae import (MaskedAutoencoder, gather_tokens, normalise_patches, patchify, random_masking,
                                   reconstruction_loss, unshuffle)
from vitkit.recipes import build, get_recipe
from vitkit.train.finetune import finetune
from vitkit.train.loop import train

# digits at 16 px, patch 4: 16 patches (12 hidden at 0.75); the same numbers on every CPU (fp32)
TINY = ["data.name=digits", "data.image_size=16", "model.patch_size=4", "model.width=32", "model.depth=2", "model.heads=2",
        "model.mlp_dim=64", "mae.decoder_width=32", "mae.decoder_depth=1", "mae.decoder_heads=2", "train.batch_size=32",
        "train.progress=false", "train.precision=fp32", "train.log_every=1", "optim.warmup_steps=2"]


def tiny(*extra: str) -> Config:
    return apply_overrides(get_recipe("mae"), TINY + list(extra))


def make(channels: int = 1, pool: str = "gap", **kw) -> tuple[torch.nn.Module, MaskedAutoencoder]:
    model = vitkit.create_model("ViT-Ti/16", width=32, depth=2, heads=2, mlp_dim=64, patch_size=4, image_size=16,
                                in_chans=channels, num_classes=0, pool=pool, posemb="learned")
    c = model.config
    kw = {"decoder_width": 32, "decoder_depth": 1, "decoder_heads": 2, **kw}
    return model, MaskedAutoencoder(c.width, c.patch_size, channels, c.grid, c.num_prefix_tokens, **kw)


def test_masking_hides_exactly_round_ratio_n_per_image_and_keeps_the_rest():
    ids_keep, ids_restore, hidden = random_masking(6, 49, 0.75, torch.Generator().manual_seed(0))
    assert ids_keep.shape == (6, 12) and ids_restore.shape == hidden.shape == (6, 49)
    assert (hidden.sum(1) == 37).all()  # round(0.75 * 49) per image, every image
    assert not hidden.gather(1, ids_keep).any()  # the kept positions are exactly the visible ones
    assert (torch.sort(ids_keep, 1).values != torch.sort(ids_keep[torch.randperm(6)], 1).values).any()  # drawn per image
    ids_shuffle = ids_restore.argsort(1)
    assert torch.equal(ids_shuffle.gather(1, ids_restore), torch.arange(49).expand(6, -1))  # an inverse permutation
    _, _, none = random_masking(3, 16, 0.0)
    assert not none.any()
    # the same generator seed, the same masks (evaluation's fixed draw)
    a = random_masking(2, 16, 0.5, torch.Generator().manual_seed(3))
    b = random_masking(2, 16, 0.5, torch.Generator().manual_seed(3))
    assert all(torch.equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize("pool", ["gap", "token"])
def test_the_encoder_sees_only_the_visible_tokens_with_their_positions(pool):
    torch.manual_seed(0)
    model, mae = make(pool=pool)
    prefix = model.num_prefix_tokens
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    x = torch.randn(3, 1, 16, 16)
    ids_keep, ids_restore, hidden = random_masking(3, 16, 0.75, torch.Generator().manual_seed(1))
    latent = mae.encode(model, x, ids_keep)
    assert seen[0].shape == (3, prefix + 4, 32) and latent.shape == (3, prefix + 4, 32)
    # the first block's input is the full embedding (class token, position embeddings) at the kept positions
    full = model.embed(x)  # (3, prefix + 16, 32)
    want = torch.cat([full[:, :prefix], gather_tokens(full[:, prefix:], ids_keep)], dim=1)
    torch.testing.assert_close(seen[0], want)
    assert mae.decode(latent, ids_restore).shape == (3, 16, 4 * 4 * 1)
    loss, metrics = mae(model, x, None, torch.Generator().manual_seed(1))
    assert loss.ndim == 0 and set(metrics) == {"mae_mse"} and seen[-1].shape == (3, prefix + 4, 32)


def test_unshuffle_against_a_hand_made_case():
    # 4 patches; the permutation (2, 0, 3, 1): patches 2 and 0 visible (in that order), 3 and 1 hidden
    ids_shuffle = torch.tensor([[2, 0, 3, 1]])
    ids_restore = ids_shuffle.argsort(1)
    assert ids_restore.tolist() == [[1, 3, 0, 2]]
    visible = torch.tensor([[[30.0], [10.0]]])  # the tokens of patches 2 and 0
    out = unshuffle(visible, torch.full((1, 1, 1), -1.0), ids_restore)
    assert out.flatten().tolist() == [10.0, -1.0, 30.0, -1.0]  # grid order, [mask] where hidden
    # a round trip on random data: visible tokens back in their places, [mask] everywhere else
    tokens = torch.randn(5, 16, 8)
    ids_keep, ids_restore, hidden = random_masking(5, 16, 0.75)
    mask = torch.randn(1, 1, 8)
    back = unshuffle(gather_tokens(tokens, ids_keep), mask, ids_restore)
    assert torch.equal(back[~hidden], tokens[~hidden]) and (back[hidden] == mask[0]).all()


def test_targets_worked_by_hand():
    x = torch.zeros(1, 1, 4, 4)  # patch 2: a 2 x 2 grid
    x[0, 0, :2, :2] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # top-left: 1, 2, 3, 4
    x[0, 0, :2, 2:] = 5.0  # top-right: constant
    x[0, 0, 2:, :2] = torch.tensor([[0.0, 0.0], [0.0, 8.0]])  # bottom-left
    t = patchify(x, 2)
    assert t.shape == (1, 4, 4) and t[0, 0].tolist() == [1.0, 2.0, 3.0, 4.0] and t[0, 1].tolist() == [5.0] * 4
    norm = normalise_patches(t)
    s = math.sqrt(5 / 3 + 1e-6)  # mean 2.5, sample variance (2.25 + 0.25 + 0.25 + 2.25) / 3, as the MAE reference
    torch.testing.assert_close(norm[0, 0], torch.tensor([-1.5, -0.5, 0.5, 1.5]) / s)
    assert norm[0, 1].tolist() == [0.0] * 4  # a constant patch: all zero (the eps keeps it finite)
    torch.testing.assert_close(norm[0, 2], (torch.tensor([0.0, 0, 0, 8]) - 2) / math.sqrt(16 + 1e-6))  # 48 / 3
    # channels last within a pixel, pixels row by row: the flattened patches of eq. 1
    rgb = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    want = [rgb[0, c, i, 2 + j].item() for i in range(2) for j in range(2) for c in range(2)]
    assert patchify(rgb, 2)[0, 1].tolist() == want
    _, mae = make(target="pixels")
    img = torch.randn(2, 1, 16, 16)
    assert torch.equal(mae.targets(img), patchify(img, 4))
    _, mae = make()
    torch.testing.assert_close(mae.targets(img), normalise_patches(patchify(img, 4)))


def test_the_loss_scores_the_hidden_patches_only():
    torch.manual_seed(0)
    model, mae = make()
    x = torch.randn(4, 1, 16, 16)
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    _, _, hidden = random_masking(4, 16, 0.75, gen())
    base, _ = mae(model, x, None, gen())
    real = mae.decode

    def shifted(where):
        mae.decode = lambda latent, ids: real(latent, ids) + 100.0 * where[..., None]
        loss, _ = mae(model, x, None, gen())
        mae.decode = real
        return loss

    assert torch.equal(shifted(~hidden), base)  # other predictions on visible patches: the same loss
    assert shifted(hidden) > base + 1000  # on hidden ones: a very different loss
    # by hand: the mean over hidden patches of the per-patch mean squared error
    pred, target = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    scored = torch.tensor([[True, False, False], [False, True, True]])
    want = ((pred - target) ** 2).mean(-1)[scored].mean()
    torch.testing.assert_close(reconstruction_loss(pred, target, scored), want)


def test_denoising_predicts_the_clean_patches_from_a_noised_input():
    torch.manual_seed(0)
    model, mae = make(noise_std=0.5, mask_ratio=0.0)  # pure denoising
    x = torch.randn(8, 1, 16, 16)
    inputs, targets, lengths = [], [], []
    model.patch_embed.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].detach().clone()))
    model.blocks[0].register_forward_pre_hook(lambda _m, args: lengths.append(args[0].shape[1]))
    real = mae.targets
    mae.targets = lambda images: (targets.append(images), real(images))[1]
    loss, _ = mae(model, x, None, torch.Generator().manual_seed(2))
    assert lengths == [16]  # nothing hidden: the encoder sees every patch
    assert targets[0] is x  # the targets are the clean image's patches
    noise = inputs[0] - x
    assert abs(noise.std().item() - 0.5) < 0.03 and abs(noise.mean().item()) < 0.05  # 2048 draws of N(0, 0.25)
    # every patch is scored (none was seen clean), even with masking on
    model, mae = make(noise_std=0.5, mask_ratio=0.5)
    _, _, hidden = random_masking(8, 16, 0.5, torch.Generator().manual_seed(2))
    real = mae.decode
    base, _ = mae(model, x, None, torch.Generator().manual_seed(2))
    mae.decode = lambda latent, ids: real(latent, ids) + 100.0 * (~hidden)[..., None]
    assert mae(model, x, None, torch.Generator().manual_seed(2))[0] > base + 1000
    # without noise the input is the image itself
    model, mae = make()
    inputs.clear()
    model.patch_embed.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
    mae(model, x)
    assert inputs[0] is x


def test_bad_values_are_refused_with_the_key():
    cases = [("mae.mask_ratio=1", r"mae.mask_ratio=1: must be a number in \[0, 1\)"),
             ("mae.mask_ratio=-0.1", "mae.mask_ratio=-0.1: must be"),
             ("mae.noise_std=-1", "mae.noise_std=-1: must be a number >= 0"),
             ("mae.noise_std=nan", "mae.noise_std=nan: must be"),
             ("mae.target=raw", "mae.target='raw': choose one of norm, pixels"),
             ("mae.decoder_posemb=relative", "mae.decoder_posemb='relative': choose one of sincos2d, learned"),
             ("mae.decoder_depth=0", "mae.decoder_depth=0: must be an integer >= 1"),
             ("mae.decoder_heads=3", "mae.decoder_width=64 is not divisible by mae.decoder_heads=3"),
             ("mae.decoder_width=66 mae.decoder_heads=2", "mae.decoder_width=66 with mae.decoder_posemb=sincos2d"),
             ("mae.mask_ratio=0", "mae.mask_ratio=0 hides none of the 49 patches and mae.noise_std=0: nothing to predict"),
             ("mae.mask_ratio=0.99", "mae.mask_ratio=0.99 hides all 49 patches"),
             ("model.posemb=relative", "model.posemb='relative' with objective=mae"),
             ("model.posemb_placement=shared", "model.posemb_placement='shared' with objective=mae")]
    for overrides, msg in cases:
        with pytest.raises(ValueError, match=msg):
            validate(build("mae", overrides.split()))
    validate(build("mae", ["mae.mask_ratio=0", "mae.noise_std=0.3"]))  # pure denoising is allowed
    validate(build("mae", ["mae.decoder_width=66", "mae.decoder_heads=3", "mae.decoder_posemb=learned"]))
    for name, msg in (("R+ViT-Ti/16", "a hybrid's ResNet stem sees the whole image"), ("Axial-ViT-B/16", "choose a ViT"),
                      ("AxialResNet50", "choose a ViT")):
        with pytest.raises(ValueError, match=f"model.name='{re.escape(name)}' with objective=mae: .*{msg}"):
            validate(build("mae", [f"model.name={name}", "data.image_size=32"]))
    with pytest.raises(ValueError, match=r"mae.target='raw' is not one of \('norm', 'pixels'\)"):
        make(target="raw")


def test_a_bad_value_on_the_command_line_writes_nothing(tmp_path, capsys):
    assert main(["train", "--recipe", "mae", "--set", "mae.mask_ratio=1.5", "--out", str(tmp_path / "run")]) == 2
    assert "mae.mask_ratio=1.5: must be a number in [0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_tiny_run_learns_exports_a_plain_encoder_and_transfers(tmp_path, capsys):
    run = tmp_path / "mae"
    sets = [s for o in TINY + ["train.steps=25", "optim.lr=3e-3"] for s in ("--set", o)]
    assert main(["train", "--recipe", "mae", *sets, "--out", str(run)]) == 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [line["loss"] for line in lines if line["split"] == "train"]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5  # the reconstruction error falls
    res = json.loads((run / "metrics.json").read_text())
    assert 0 < res["test"]["mae_mse"] < losses[0] and "top1" not in res["test"]
    assert json.loads((run / "config.json").read_text())["mae"]["mask_ratio"] == 0.75
    # the compute record counts the encoder on 4 of 16 tokens and the decoder, as the objective does
    encoder, card = vitkit.load(run)
    mae = MaskedAutoencoder.from_config(tiny(), encoder)
    assert res["compute"]["flops_per_image"] == mae.train_flops(encoder.config, 16) and "decoder" in res["compute"]["counted"]
    # the saved model is a plain ViT encoder: no decoder, no [mask] token, no head, no class names
    plain = vitkit.create_model("ViT-Ti/16", patch_size=4, width=32, depth=2, heads=2, mlp_dim=64, image_size=16, in_chans=1,
                                num_classes=0, pool="gap", posemb="sincos2d")
    assert set(encoder.state_dict()) == set(plain.state_dict()) and encoder.config.num_classes == 0
    assert not any("decoder" in k or "mask_token" in k for k in load_file(str(run / "checkpoint/model.safetensors")))
    assert card.class_names is None and isinstance(vitkit.load_model(run), type(plain))
    ft = finetune(str(run), "digits", out=tmp_path / "ft", overrides=["train.steps=4", "train.batch_size=32", "train.progress=false",
                                                                       "train.eval_every=4", "train.ckpt_every=4"])
    assert 0 <= ft["test"]["top1"] <= 1
    capsys.readouterr()
    assert main(["fewshot", str(run), "--data", "digits", "--shots", "1", "--seeds", "1", "--json"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["shots"]["1"]["mean"] <= 1


def test_a_stopped_and_resumed_run_is_bit_identical_to_one_run(tmp_path):
    """The decoder (its learned position table here), its optimizer moments, the schedule and the RNG of the masks and
    the noise all come back: 3 + 3 steps are the 6 steps of one run."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    extra = ("train.steps=6", "mae.decoder_posemb=learned", "mae.noise_std=0.2")
    train(tiny(*extra), out=tmp_path / "one")
    stopped = train(tiny(*extra, "train.stop_at_step=3"), out=tmp_path / "two")
    assert stopped["stopped"] and stopped["steps"] == 3
    train(Config(), resume=tmp_path / "two")
    a, b = (load_file(str(tmp_path / n / "checkpoint/model.safetensors")) for n in ("one", "two"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    states = []
    for n in ("one", "two"):
        dcp_to_torch_save(tmp_path / n / "checkpoint/train_state", tmp_path / f"{n}.pt")
        states.append(torch.load(tmp_path / f"{n}.pt", weights_only=True))
    sa, sb = states
    assert "objective.decoder_pos_embed" in sa["module"] and "objective.mask_token" in sa["module"]
    assert all(torch.equal(sa["module"][k], sb["module"][k]) for k in sa["module"])
    assert all(torch.equal(v, sb["optim"]["state"][p][k]) for p, s in sa["optim"]["state"].items() for k, v in s.items())
    ma, mb = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("one", "two"))
    assert ma["test"]["mae_mse"] == mb["test"]["mae_mse"]


def test_with_ema_validation_scores_the_live_encoder_with_the_live_decoder(tmp_path):
    """The decoder is not averaged: validation pairs it with the live encoder it was trained with (not the EMA one,
    which the checkpoint holds), on the objective's fixed draw."""
    from vitkit.data.loader import eval_stream
    from vitkit.train.loop import run_steps, setup

    cfg = tiny("train.steps=3", "train.batch_size=8", "train.eval_every=100", "train.ckpt_every=100", "train.threads=1",
               "optim.lr=3e-3", "optim.ema=0.5", "data.val_size=16")
    r = setup(cfg, tmp_path / "run")
    try:
        run_steps(r)
        reported = r.evaluate(r.ds.val)

        def by_hand(model):
            batches = eval_stream(r.ds.val, cfg.data, 1, cfg.train.eval_batch_size)
            return r.objective.evaluate(model, batches, "fp32")["mae_mse"]

        assert reported["n"] == 16 and reported["mae_mse"] == by_hand(r.model) != by_hand(r.ema.module)
    finally:
        r.release()
