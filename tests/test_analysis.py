"""The paper's analyses on constructed cases, and the report end to end."""
import json
import re

import pytest
import torch

import vitkit
from vitkit.analysis.attention import (attention_rollout, class_token_attention, mean_attention_distance, patch_distances,
                                       rollout_maps)
from vitkit.analysis.embeddings import cosine_grid, embedding_filters, posemb_similarity
from vitkit.analysis.report import analyze
from vitkit.cli import main
from vitkit.models.posemb import sincos_2d


def test_identity_attention_has_zero_distance():
    T = 1 + 16
    attn = [torch.eye(T).expand(2, 3, T, T)]
    assert mean_attention_distance(attn, (4, 4), 16.0).abs().max() == 0


def test_uniform_attention_gives_the_mean_pairwise_distance():
    grid, px = (4, 4), 8.0
    N = 16
    a = torch.zeros(2, 2, 1 + N, 1 + N)
    a[:, :, :, 1:] = 1.0 / N  # every query spreads evenly over the patches
    got = mean_attention_distance([a, a], grid, px)
    ys, xs = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    pts = torch.stack([ys.flatten(), xs.flatten()], 1) * px
    analytic = torch.cdist(pts, pts).mean()
    torch.testing.assert_close(got, torch.full((2, 2), analytic.item()))
    assert patch_distances((1, 2), 16)[0, 1] == 16


def test_rows_are_not_renormalised_after_dropping_the_class_token():
    N = 4
    a = torch.zeros(1, 1, 1 + N, 1 + N)
    a[..., 0] = 0.5  # half of every row on the class token
    a[..., 1:] = 0.5 / N
    half = mean_attention_distance([a], (2, 2), 1.0)
    a[..., 0], a[..., 1:] = 0.0, 1.0 / N
    full = mean_attention_distance([a], (2, 2), 1.0)
    torch.testing.assert_close(half, full / 2)


def test_rollout_of_identity_is_identity():
    T = 10
    eye = torch.eye(T).expand(3, 4, T, T)
    torch.testing.assert_close(attention_rollout([eye, eye, eye]), torch.eye(T).expand(3, T, T))


def test_rollout_worked_by_hand():
    # layer 1, two heads: identity and "everyone looks at token 1"; mean [[.5, .5], [0, 1]]; + I, rows
    # renormalised: [[.75, .25], [0, 1]]. Layer 2: [[0, 1], [0, 1]] -> [[.5, .5], [0, 1]].
    # Rollout = layer 2 @ layer 1 = [[.375, .625], [0, 1]].
    a1 = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]]])
    a2 = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    torch.testing.assert_close(attention_rollout([a1, a2]), torch.tensor([[[0.375, 0.625], [0.0, 1.0]]]))
    # without the residual: [[.5, .5], [0, 1]] then [[0, 1], [0, 1]] -> [[0, 1], [0, 1]]
    torch.testing.assert_close(attention_rollout([a1, a2], add_residual=False), torch.tensor([[[0.0, 1.0], [0.0, 1.0]]]))


def test_rollout_maps_worked_by_hand():
    r = torch.tensor([[[0.1, 0.2, 0.4, 0.1, 0.2], [0.0] * 5, [0.0] * 5, [0.0] * 5, [0.0] * 5]])
    # the class token's row over the 2 x 2 patches, scaled to a maximum of 1
    torch.testing.assert_close(rollout_maps(r, (2, 2)), torch.tensor([[[0.5, 1.0], [0.25, 0.5]]]))
    # no class token: the mean of the patch rows
    r = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    torch.testing.assert_close(rollout_maps(r, (1, 2), num_prefix_tokens=0), torch.tensor([[[1.0, 1.0]]]))


def test_mean_attention_distance_worked_by_hand():
    # two patches side by side, 16 px apart; a class token in front. Patch query 1 puts 0.25 on patch 2
    # (distance 4 px), patch query 2 puts 0.5 on patch 1 and 0.5 on the class token (dropped, not renormalised:
    # 8 px). Mean over the two queries: 6 px. The class token's own row (all on patch 2) is ignored.
    a = torch.tensor([[[[0.0, 0.0, 1.0], [0.0, 0.75, 0.25], [0.5, 0.5, 0.0]]]])
    torch.testing.assert_close(mean_attention_distance([a], (1, 2), 16.0), torch.tensor([[6.0]]))
    # a 2 x 2 grid: the diagonal neighbour is sqrt(2) patches away
    assert patch_distances((2, 2), 10.0)[0, 3].item() == pytest.approx(10 * 2 ** 0.5)


def test_sincos_similarity_is_symmetric_with_diagonal_maximum():
    sim = cosine_grid(sincos_2d((5, 6), 32), (5, 6))
    flat = sim.reshape(30, 30)
    torch.testing.assert_close(flat, flat.T)
    torch.testing.assert_close(flat.diagonal(), torch.ones(30))
    assert (flat.argmax(1) == torch.arange(30)).all()


def test_embedding_filters_are_principal_components():
    model = vitkit.create_model("ViT-Ti/16", width=64, depth=1, heads=2, mlp_dim=64, patch_size=4, image_size=16)
    filters, var = embedding_filters(model, n=28)
    assert filters.shape == (28, 3, 4, 4) and (var[:-1] >= var[1:]).all() and var.sum() <= 1
    comps = filters.reshape(28, -1).double()
    torch.testing.assert_close(comps @ comps.T, torch.eye(28, dtype=torch.float64), atol=1e-5, rtol=0)


def test_class_token_attention_checks_the_head():
    a = [torch.rand(2, 3, 5, 5)]
    assert class_token_attention(a, (2, 2), head=2).shape == (1, 2, 2, 2)
    with pytest.raises(ValueError, match="head 3 does not exist; the model has 3 heads"):
        class_token_attention(a, (2, 2), head=3)


def test_posemb_similarity_of_learned_and_none():
    model = vitkit.create_model("ViT-Ti/16", width=32, depth=1, heads=2, mlp_dim=64, patch_size=4, image_size=16)
    sim, kind = posemb_similarity(model)
    assert kind == "learned" and sim.shape == (4, 4, 4, 4)
    none = vitkit.create_model("ViT-Ti/16", width=32, depth=1, heads=2, mlp_dim=64, patch_size=4, image_size=16, posemb="none")
    with pytest.raises(ValueError, match="no position embedding"):
        posemb_similarity(none)


@pytest.mark.parametrize("name,size,kw", [("ViT-Ti/16", 16, dict(patch_size=4, in_chans=1)),
                                          ("R+ViT-Ti/16", 64, dict(patch_size=2, pool="gap", in_chans=1))])
def test_analyze_writes_figures_and_a_self_contained_report(tmp_path, name, size, kw, capsys):
    model = vitkit.create_model(name, width=32, depth=2, heads=2, mlp_dim=64, image_size=size, num_classes=10, **kw)
    src = vitkit.save_model(model, tmp_path / "m")
    out = tmp_path / "report"
    res = analyze(str(src), out, data="digits", num_images=20)
    assert res["num_images"] == 20 and len(res["attention_distance_px"]) == 2
    expected = {"posemb_similarity.png", "attention_distance.png", "rollout.png", "class_attention.png", "report.html",
                "attention_distance.json"} | ({"filters.png"} if "R+" not in name else set())
    assert expected <= {p.name for p in out.iterdir()}
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(res["figures"])
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)  # base64 may spell 'http' by chance
    assert not re.search(r"(src|href)=[\"']?(https?:|//)", text) and "http://" not in text and "https://" not in text
    assert json.loads((out / "attention_distance.json").read_text())["grid"] == list(model.config.grid)
    # a non-empty output directory is not overwritten without --force
    assert main(["analyze", str(src), "--data", "digits", "--out", str(out), "--num-images", "4"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_analyze_image_files(tmp_path, capsys):
    from PIL import Image

    model = vitkit.create_model("ViT-Ti/16", width=32, depth=1, heads=2, mlp_dim=64, patch_size=8, image_size=32, num_classes=3)
    src = vitkit.save_model(model, tmp_path / "m")
    Image.new("RGB", (50, 40), (10, 200, 30)).save(tmp_path / "a.jpg")
    Image.new("RGBA", (20, 20), (10, 20, 30, 100)).save(tmp_path / "b.png")
    assert main(["analyze", str(src), str(tmp_path / "a.jpg"), str(tmp_path / "b.png"), "--out", str(tmp_path / "o")]) == 0
    assert "layer  1" in capsys.readouterr().out
    assert main(["analyze", str(src), "--out", str(tmp_path / "p")]) == 2
    assert "give --data NAME or one or more IMAGE" in capsys.readouterr().err
