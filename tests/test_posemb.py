"""Appendix D.4's position embeddings: learned 2-D (X and Y tables), 1-D relative attention, and the three placements
(after the stem, a new table at every layer, one shared table at every layer). Expected values are worked by hand from
the appendix's definitions, or come from timm for what an outside format can hold."""
import pytest
import torch
import torch.nn as nn

import vitkit
from vitkit.models.posemb import learned_2d, relative_logits, resample_axis

TINY = dict(width=8, depth=3, heads=2, mlp_dim=16, image_size=12, patch_size=4, num_classes=3)  # a 3 x 3 grid, T = 10


def tiny(**kw):
    torch.manual_seed(0)
    return vitkit.create_model("ViT-Ti/16", **{**TINY, **kw})


def test_learned_2d_concatenates_the_column_and_row_embeddings():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])  # (1, w=3, 2)
    y = torch.tensor([[[10.0, 20.0], [30.0, 40.0]]])  # (1, h=2, 2)
    pe = learned_2d(x, y)  # (1, 6, 4), raster order: row 0 columns 0-2, then row 1
    assert pe.shape == (1, 6, 4)
    assert pe[0, 0].tolist() == [1, 2, 10, 20]  # (row 0, col 0)
    assert pe[0, 2].tolist() == [5, 6, 10, 20]  # (row 0, col 2)
    assert pe[0, 4].tolist() == [3, 4, 30, 40]  # (row 1, col 1)


def test_relative_logits_pick_each_query_key_offset():
    # one head, 3 tokens: offset o = i - j in -2..2 at column o + 2; q_i . r_o worked by hand
    q = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]])  # (1, 1, 3, 2)
    r = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [3.0, 5.0], [4.0, 7.0], [5.0, 11.0]]])  # (1, 5, 2): offsets -2..2
    got = relative_logits(q, r)[0, 0]
    want = torch.tensor([
        [3.0, 2.0, 1.0],  # query 0 (1, 0) . r at offsets 0, -1, -2
        [7.0, 5.0, 0.0],  # query 1 (0, 1) . r at offsets 1, 0, -1
        [16.0, 11.0, 8.0],  # query 2 (1, 1) . r at offsets 2, 1, 0
    ])
    torch.testing.assert_close(got, want)


def test_relative_attention_follows_the_offset_embedding():
    # content attention switched off (k = 0), queries constant: only the relative logits steer; a large embedding for
    # offset +1 (query - key = 1) makes every query but the first attend to the token before it
    m = tiny(posemb="relative", depth=1, zero_head=False).eval()
    attn = m.blocks[0].attn
    D, T = 8, 10
    with torch.no_grad():
        attn.qkv.weight.zero_()
        attn.qkv.bias.zero_()
        attn.qkv.bias[:D] = 1.0  # q = 1 for every token, k = v = 0
        m.rel_pos_embed.zero_()
        m.rel_pos_embed[0, 1 + T - 1] = 50.0  # offset +1
    w = m.forward_intermediates(torch.randn(1, 3, 12, 12))["attn"][0][0]  # (heads, T, T)
    for i in range(1, T):
        assert w[:, i].argmax(-1).tolist() == [i - 1, i - 1]
    assert torch.allclose(w[:, 0], torch.full((2, T), 1 / T))  # token 0 has no token before it: uniform


def test_relative_attention_fused_and_explicit_paths_agree_with_gradients():
    m = tiny(posemb="relative", zero_head=False)
    x = torch.randn(2, 3, 12, 12)
    fused = m(x)  # SDPA with the relative logits as its additive mask
    fused.square().sum().backward()
    g_fused = m.rel_pos_embed.grad.clone()
    m.zero_grad()
    explicit = m.forward_intermediates(x)["logits"]  # softmax(q k^T / sqrt(d) + bias) v
    explicit.square().sum().backward()
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m.rel_pos_embed.grad, g_fused, atol=1e-5, rtol=1e-4)
    assert g_fused.abs().sum() > 0


@pytest.mark.parametrize("posemb,placement,params", [
    ("learned", "stem", 10 * 8),  # T x D
    ("learned", "every_layer", 3 * 10 * 8),  # a table per layer
    ("learned", "shared", 10 * 8),
    ("learned2d", "stem", (3 + 3) * 4),  # an X (w x D/2) and a Y (h x D/2) table
    ("learned2d", "every_layer", 3 * (3 + 3) * 4),
    ("relative", "every_layer", 3 * (2 * 10 - 1) * 8),  # (2T - 1) offsets x D per layer
    ("relative", "shared", (2 * 10 - 1) * 8),
    ("sincos2d", "shared", 0),
    ("none", "stem", 0),
])
def test_position_parameters_by_kind_and_placement(posemb, placement, params):
    base = vitkit.count_params(tiny(posemb="none"))
    m = tiny(posemb=posemb, posemb_placement=placement)
    assert vitkit.count_params(m) - base == params
    assert m(torch.randn(2, 3, 12, 12)).shape == (2, 3)


def silence_blocks(m: nn.Module) -> None:
    """Every residual branch outputs zero, so the final tokens are the embeddings plus what each placement adds."""
    with torch.no_grad():
        for blk in m.blocks:
            for lin in (blk.attn.proj, blk.mlp.fc2):
                lin.weight.zero_()
                lin.bias.zero_()


@pytest.mark.parametrize("posemb", ["learned", "learned2d"])
@pytest.mark.parametrize("placement", ["stem", "every_layer", "shared"])
def test_placement_adds_each_table_where_the_appendix_says(posemb, placement):
    m = tiny(posemb=posemb, posemb_placement=placement).eval()
    silence_blocks(m)
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        tokens = m.encode(m.add_tokens(m.patch_embed(x)))
        start = torch.cat([m.cls_token.expand(2, -1, -1), m.patch_embed(x)], dim=1)  # before any position embedding
        if posemb == "learned":
            tables = list(m.pos_embed)  # each (T, D)
        else:  # [X[x], Y[y]] per patch, zero for the class token
            tables = []
            for k in range(m.pos_embed_x.shape[0]):
                rows = [torch.cat([m.pos_embed_x[k, c], m.pos_embed_y[k, r]]) for r in range(3) for c in range(3)]
                tables.append(torch.stack([torch.zeros(8)] + rows))
    added = {"stem": lambda: tables[0], "shared": lambda: 3 * tables[0], "every_layer": lambda: sum(tables)}[placement]()
    assert len(tables) == (3 if placement == "every_layer" else 1)
    torch.testing.assert_close(tokens, start + added, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("posemb,placement", [
    ("learned", "every_layer"), ("learned2d", "stem"), ("learned2d", "shared"), ("relative", "every_layer"),
    ("relative", "shared"), ("sincos2d", "shared")])
def test_train_step_and_vitkit_round_trip(posemb, placement, tmp_path):
    m = tiny(posemb=posemb, posemb_placement=placement, zero_head=False)
    x, y = torch.randn(8, 3, 12, 12), torch.randint(0, 3, (8,))
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    losses = []
    for _ in range(5):
        loss = nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    tables = [n for n, p in m.named_parameters() if "pos_embed" in n]
    assert all(m.get_parameter(n).grad.abs().sum() > 0 for n in tables)  # every table learns
    vitkit.save_model(m, tmp_path / "run")
    back = vitkit.load_model(tmp_path / "run").eval()
    assert (back.config.posemb, back.config.posemb_placement) == (posemb, placement)
    m.eval()
    torch.testing.assert_close(back(x), m(x), atol=0, rtol=0)


def test_learned2d_resamples_each_axis_on_a_new_grid():
    m = tiny(posemb="learned2d")
    with torch.no_grad():  # column c's X embedding = c, row r's Y embedding = 10 r: linear fields stay linear
        m.pos_embed_x.copy_(torch.arange(3.0)[None, :, None].expand(1, 3, 4))
        m.pos_embed_y.copy_(10 * torch.arange(3.0)[None, :, None].expand(1, 3, 4))
    m.set_image_size(20)  # 5 x 5 grid; linear with the end rows aligned: 0, 0.5, 1, 1.5, 2
    assert m.pos_embed_x.shape == (1, 5, 4) and m.pos_embed_y.shape == (1, 5, 4)
    torch.testing.assert_close(m.pos_embed_x[0, :, 0], torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0]))
    torch.testing.assert_close(m.pos_embed_y[0, :, 1], torch.tensor([0.0, 5.0, 10.0, 15.0, 20.0]))
    assert m(torch.randn(1, 3, 20, 20)).shape == (1, 3)


def test_every_layer_tables_resample_each_on_its_own():
    m = tiny(posemb="learned", posemb_placement="every_layer")
    with torch.no_grad():
        for k in range(3):
            m.pos_embed[k] = float(k)
    m.set_image_size(20)
    assert m.pos_embed.shape == (3, 26, 8)
    for k in range(3):  # a constant table stays that constant: no mixing across layers
        torch.testing.assert_close(m.pos_embed[k], torch.full((26, 8), float(k)))


def test_relative_refuses_another_grid_with_a_clear_error():
    m = tiny(posemb="relative")
    with pytest.raises(ValueError, match="posemb='relative'.*3x3 patch grid"):
        m.set_image_size(20)
    m.set_image_size(12)  # the same grid is fine
    assert m.config.image_size == 12


def test_resample_axis_keeps_dtype_and_identity():
    t = torch.randn(2, 4, 6, dtype=torch.bfloat16)
    assert resample_axis(t, 4).equal(t)
    assert resample_axis(t, 7, "bicubic").dtype == torch.bfloat16


@pytest.mark.parametrize("kw,match", [
    (dict(posemb="relative", posemb_placement="stem"), "every_layer"),
    (dict(posemb="sincos2d", posemb_placement="every_layer"), "shared"),
    (dict(posemb="none", posemb_placement="shared"), "nothing|no embedding"),
    (dict(posemb_placement="sometimes"), "posemb_placement='sometimes' is not one of"),
    (dict(posemb="learned2d", width=6, heads=2, mlp_dim=12), None),  # even width: fine
    (dict(posemb="learned2d", width=9, heads=3, mlp_dim=12), "odd"),
])
def test_placement_validation_names_the_option(kw, match):
    if match is None:
        assert tiny(**kw).config.posemb == "learned2d"
        return
    with pytest.raises(ValueError, match=match):
        tiny(**kw)


@pytest.mark.parametrize("kw", [dict(posemb="relative"), dict(posemb="learned", posemb_placement="shared")])
@pytest.mark.parametrize("fmt", ["timm", "hf", "npz"])
def test_outside_formats_refuse_what_they_cannot_hold(kw, fmt, tmp_path):
    m = tiny(**kw)
    with pytest.raises(vitkit.CheckpointError, match="save this model as vitkit"):
        vitkit.save_model(m, tmp_path / {"npz": "m.npz", "timm": "m.safetensors", "hf": "m"}[fmt], format=fmt)
    assert not any(tmp_path.iterdir())


def test_similarity_analysis_reads_the_2d_table_and_refuses_relative():
    from vitkit.analysis.embeddings import position_embeddings

    m = tiny(posemb="learned2d")
    pe, kind = position_embeddings(m)
    assert kind == "learned2d" and pe.shape == (9, 8)
    torch.testing.assert_close(pe[4], torch.cat([m.pos_embed_x[0, 1], m.pos_embed_y[0, 1]]).detach())
    with pytest.raises(ValueError, match="relative offsets"):
        position_embeddings(tiny(posemb="relative"))


def test_set_posemb_none_is_the_choice_not_the_default():
    """`--set model.posemb=none` trains without position embeddings (the choice "none"), not with the variant's default:
    the string once parsed as null there (the reproduce study's "none" arm ran with learned embeddings)."""
    from vitkit.models.registry import build_model, model_config
    from vitkit.recipes import build

    cfg = build("fashion-mnist", ["model.posemb=none", "model.width=32", "model.depth=1", "model.heads=2"])
    assert cfg.model.posemb == "none"
    model = build_model(model_config(cfg.model.name, image_size=28, num_classes=10, in_chans=1, **cfg.model.overrides()))
    assert model.config.posemb == "none" and not any("pos" in n for n, _ in model.named_parameters())
    assert build("fashion-mnist", ["model.posemb=null"]).model.posemb is None  # null: the variant's default
    assert build("fashion-mnist", ["model.init=none"]).model.init is None  # "none" that is no choice: null, as before
