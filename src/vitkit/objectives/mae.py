"""Masked autoencoding (He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners") and its denoising variant.

Hide a fraction of each image's patches (75%, drawn per image): the encoder runs on the visible patches' tokens
only (the class token, if the model has one, and the position embeddings added before the hidden ones are dropped).
A light Transformer decoder of its own width and depth takes the encoded tokens, projected to its width, puts a
learned [mask] token in every hidden position, restores the grid order, adds its own position embeddings and
predicts every patch's pixels. The targets are the patches' pixels standardised per patch (its own mean and
variance; section 3, "normalized pixels"), or the pixels as the model sees them; the loss is the mean squared
error over the hidden patches only.

The denoising variant (mae.noise_std > 0) adds Gaussian noise to the input image and predicts the clean patches;
the loss then scores every patch whose clean content the encoder did not see: the hidden ones and the (noised)
visible ones. With mae.mask_ratio=0 that is pure denoising, scored over all patches.

The encoder is the ordinary VisionTransformer; the decoder lives here, so the saved model is a plain ViT encoder
that `finetune` / `fewshot` / `analyze` load like any checkpoint, without it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

from vitkit.config import Config, MaeConfig
from vitkit.models.posemb import sincos_2d
from vitkit.models.vit import Block, ViTConfig, official_init_
from vitkit.train.precision import autocast

TARGETS = ("norm", "pixels")
DECODER_POSEMBS = ("sincos2d", "learned")
NORM_EPS = 1e-6  # added to each patch's variance before standardising (the MAE reference's)


def masked_per_image(ratio: float, n: int) -> int:
    """How many of an image's n patches are hidden: round(ratio * n), the same for every image (static shapes)."""
    return int(round(ratio * n))


def check_setup(model_cfg: Any, mae: MaeConfig, name: str = "") -> None:
    """ValueError naming the option, for a model masked autoencoding cannot train or masking settings that leave
    nothing to learn from or to predict (called by config.validate, before anything is written, and by the objective)."""
    what = f"model.name={name or getattr(model_cfg, 'name', None) or type(model_cfg).__name__!r}"
    if not isinstance(model_cfg, ViTConfig):
        raise ValueError(f"{what} with objective=mae: masked autoencoding drops the hidden patches' tokens, which a "
                         f"{type(model_cfg).__name__.removesuffix('Config')} cannot run without (no patch tokens, or "
                         f"attention over the full grid); choose a ViT (e.g. model.name=ViT-Ti/16)")
    if model_cfg.resnet is not None:
        raise ValueError(f"{what} with objective=mae: a hybrid's ResNet stem sees the whole image, hidden patches "
                         f"included; choose a plain ViT (e.g. model.name=ViT-Ti/16)")
    if model_cfg.posemb == "relative":
        raise ValueError("model.posemb='relative' with objective=mae: relative embeddings are the 1-D offsets of the full "
                         "token sequence, which dropping tokens breaks; use model.posemb=sincos2d, learned or learned2d")
    if model_cfg.posemb_placement != "stem":
        raise ValueError(f"model.posemb_placement={model_cfg.posemb_placement!r} with objective=mae: a table added at "
                         f"every layer is the full grid's, not the visible tokens'; use model.posemb_placement=stem")
    n = model_cfg.grid[0] * model_cfg.grid[1]
    k = masked_per_image(mae.mask_ratio, n)
    if k >= n:
        raise ValueError(f"mae.mask_ratio={mae.mask_ratio:g} hides all {n} patches of the {model_cfg.grid[0]}x"
                         f"{model_cfg.grid[1]} grid: the encoder would see none; choose a lower ratio")
    if k == 0 and mae.noise_std == 0:
        raise ValueError(f"mae.mask_ratio={mae.mask_ratio:g} hides none of the {n} patches and mae.noise_std=0: nothing to "
                         f"predict; raise mae.mask_ratio, or set mae.noise_std > 0 for pure denoising")


def check_options(mae: MaeConfig) -> None:
    """The decoder's shape: heads divide its width, a sin-cos table needs a width divisible by 4."""
    if mae.decoder_width % mae.decoder_heads:
        raise ValueError(f"mae.decoder_width={mae.decoder_width} is not divisible by mae.decoder_heads={mae.decoder_heads}")
    if mae.decoder_posemb == "sincos2d" and mae.decoder_width % 4:
        raise ValueError(f"mae.decoder_width={mae.decoder_width} with mae.decoder_posemb=sincos2d: the sin-cos table needs a "
                         f"width divisible by 4; choose another width or mae.decoder_posemb=learned")


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Images (B, C, H, W) -> patches (B, N, P*P*C), patches in raster order, each row by row, channels last (the
    flattened patches of eq. 1)."""
    B, C, H, W = x.shape
    h, w = H // patch, W // patch
    return x.reshape(B, C, h, patch, w, patch).permute(0, 2, 4, 3, 5, 1).reshape(B, h * w, patch * patch * C)


def normalise_patches(t: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """Each patch (last dim) standardised by its own mean and sample variance (n - 1 in the denominator, as the MAE
    reference code's `target.var`): (t - mean) / sqrt(var + eps)."""
    mean = t.mean(dim=-1, keepdim=True)
    var = t.var(dim=-1, keepdim=True, correction=1)
    return (t - mean) / (var + eps).sqrt()


def random_masking(batch: int, n: int, ratio: float, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random permutation of each image's n patches: the first n - k stay visible, the other k = round(ratio * n)
    are hidden. Returns (ids_keep (B, n - k): the visible positions in permutation order, ids_restore (B, n): where
    each grid position sits in that order, hidden (B, n) bool in grid order). No value is read back from the device."""
    draw = generator.device if generator is not None else device  # a CPU generator draws on the CPU
    scores = torch.rand(batch, n, generator=generator, device=draw).to(device)  # (B, n)
    ids_shuffle = scores.argsort(dim=1)  # (B, n): the permutation
    ids_restore = ids_shuffle.argsort(dim=1)  # (B, n): its inverse
    keep = n - masked_per_image(ratio, n)
    return ids_shuffle[:, :keep], ids_restore, ids_restore >= keep


def gather_tokens(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """tokens (B, N, D) at positions ids (B, K) -> (B, K, D)."""
    return tokens.gather(1, ids[..., None].expand(-1, -1, tokens.shape[-1]))


def unshuffle(visible: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """The visible tokens (B, K, D), in permutation order, and [mask] in the n - K hidden places, back in grid order:
    (B, n, D)."""
    B, K, D = visible.shape
    n = ids_restore.shape[1]
    full = torch.cat([visible, mask_token.to(visible.dtype).expand(B, n - K, D)], dim=1)  # (B, n, D), permutation order
    return gather_tokens(full, ids_restore)


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Mean squared error per patch (B, n), averaged over the scored patches (scored (B, n) bool)."""
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)  # (B, n)
    w = scored.to(per_patch.dtype)
    return (per_patch * w).sum() / w.sum().clamp(min=1)


class MaskedAutoencoder(nn.Module):
    """The objective: `mae(model, images, labels_ignored) -> (loss, {"mae_mse"})`; the module holds the decoder."""

    main_metric = "mae_mse"  # lower is better
    flops_counted = ("forward + backward per image of the encoder on the visible patches and of the decoder "
                     "(torch FlopCounterMode), x images seen")

    def __init__(self, width: int, patch: int, channels: int, grid: tuple[int, int], prefix: int = 0,
                 mask_ratio: float = 0.75, target: str = "norm", noise_std: float = 0.0, decoder_width: int = 128,
                 decoder_depth: int = 2, decoder_heads: int = 4, decoder_mlp_dim: int = 0, decoder_posemb: str = "sincos2d",
                 ln_eps: float = 1e-6, gelu: str = "exact"):
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"mae.target={target!r} is not one of {TARGETS}")
        if decoder_posemb not in DECODER_POSEMBS:
            raise ValueError(f"mae.decoder_posemb={decoder_posemb!r} is not one of {DECODER_POSEMBS}")
        if not 0 <= mask_ratio < 1 or noise_std < 0:
            raise ValueError(f"mae.mask_ratio={mask_ratio:g} must be in [0, 1) and mae.noise_std={noise_std:g} >= 0")
        opts = MaeConfig(mask_ratio=mask_ratio, target=target, noise_std=noise_std, decoder_width=decoder_width,
                         decoder_depth=decoder_depth, decoder_heads=decoder_heads, decoder_mlp_dim=decoder_mlp_dim,
                         decoder_posemb=decoder_posemb)
        check_options(opts)
        self.options = dataclasses.asdict(opts)  # what train_flops rebuilds it from
        self.patch, self.channels, self.grid, self.prefix = patch, channels, tuple(grid), prefix
        self.num_patches = grid[0] * grid[1]
        self.mask_ratio, self.target, self.noise_std = mask_ratio, target, noise_std
        self.extra = dict(ln_eps=ln_eps, gelu=gelu)
        if masked_per_image(mask_ratio, self.num_patches) >= self.num_patches:
            raise ValueError(f"mae.mask_ratio={mask_ratio:g} hides all {self.num_patches} patches: the encoder would see none")
        if masked_per_image(mask_ratio, self.num_patches) == 0 and noise_std == 0:
            raise ValueError(f"mae.mask_ratio={mask_ratio:g} hides no patch and mae.noise_std=0: nothing to predict")

        D, d = width, decoder_width
        blocks = ViTConfig(image_size=patch, patch_size=patch, in_chans=channels, num_classes=0, width=d, depth=decoder_depth,
                           heads=decoder_heads, mlp_dim=decoder_mlp_dim or 4 * d, pool="gap", posemb="none",
                           ln_eps=ln_eps, gelu=gelu)
        self.decoder_embed = nn.Linear(D, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        if decoder_posemb == "learned":
            self.decoder_pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, d))  # (1, n, d)
        else:
            self.register_parameter("decoder_pos_embed", None)
            self.register_buffer("decoder_pos_fixed", sincos_2d(self.grid, d)[None], persistent=False)  # (1, n, d)
        self.decoder_blocks = nn.ModuleList([Block(blocks, 0.0) for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(d, eps=ln_eps)
        self.decoder_pred = nn.Linear(d, patch * patch * channels)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The MAE reference's: Xavier-uniform dense kernels, zero biases, [mask] and a learned table N(0, 0.02)."""
        nn.init.normal_(self.mask_token, std=0.02)
        if self.decoder_pos_embed is not None:
            nn.init.normal_(self.decoder_pos_embed, std=0.02)
        for blk in self.decoder_blocks:
            official_init_(blk.attn, blk.mlp)
        for fc in (self.decoder_embed, self.decoder_pred):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    @classmethod
    def from_config(cls, cfg: Config, model: nn.Module) -> "MaskedAutoencoder":
        mc = model.config
        check_setup(mc, cfg.mae, getattr(mc, "name", None) or cfg.model.name)
        return cls(mc.width, mc.patch_size, mc.in_chans, mc.grid, mc.num_prefix_tokens, ln_eps=mc.ln_eps, gelu=mc.gelu,
                   **dataclasses.asdict(cfg.mae))

    # one method per step of the method

    def add_noise(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The denoising variant's input: x + N(0, noise_std^2) per pixel (normalised input units); x itself when off."""
        if self.noise_std == 0:
            return x
        draw = generator.device if generator is not None else x.device
        noise = torch.randn(x.shape, generator=generator, device=draw).to(x.device, x.dtype)
        return x + self.noise_std * noise

    def encode(self, model: nn.Module, x: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """The encoder on the visible patches: patch embeddings, class token and position embeddings added (the
        model's add_tokens), the hidden patches' tokens dropped, the blocks, the final LayerNorm: (B, prefix + K, D)."""
        tokens = model.add_tokens(model.patch_embed(x))  # (B, prefix + n, D)
        prefix, patches = tokens[:, : self.prefix], tokens[:, self.prefix :]
        visible = gather_tokens(patches, ids_keep)  # (B, K, D)
        return model.norm(model.encode(torch.cat([prefix, visible], dim=1)))

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Encoded tokens (B, prefix + K, D) -> every patch's predicted pixels (B, n, P*P*C), grid order."""
        z = self.decoder_embed(latent)  # (B, prefix + K, d)
        grid = unshuffle(z[:, self.prefix :], self.mask_token, ids_restore)  # (B, n, d)
        pos = self.decoder_pos_embed if self.decoder_pos_embed is not None else self.decoder_pos_fixed.to(grid.dtype)
        z = torch.cat([z[:, : self.prefix], grid + pos], dim=1)  # the class token gets no position
        for blk in self.decoder_blocks:
            z, _ = blk(z)
        return self.decoder_pred(self.decoder_norm(z))[:, self.prefix :]

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """The clean image's patches (B, n, P*P*C): standardised per patch ("norm") or as the model sees them ("pixels")."""
        t = patchify(x.float(), self.patch)
        return normalise_patches(t) if self.target == "norm" else t

    def scored(self, hidden: torch.Tensor) -> torch.Tensor:
        """The patches the loss scores (B, n) bool: the hidden ones; with noise, all (none was seen clean)."""
        return torch.ones_like(hidden) if self.noise_std > 0 else hidden

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ids_keep, ids_restore, hidden = random_masking(x.shape[0], self.num_patches, self.mask_ratio, generator, x.device)
        latent = self.encode(model, self.add_noise(x, generator), ids_keep)  # (B, prefix + K, D)
        pred = self.decode(latent, ids_restore)  # (B, n, P*P*C)
        loss = reconstruction_loss(pred, self.targets(x), self.scored(hidden))
        return loss, {"mae_mse": loss.detach()}

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], precision: str = "fp32") -> dict:
        """The reconstruction MSE over a split (the loss: hidden patches, normalised targets unless mae.target=pixels),
        with a fixed draw of masks (and noise); summed on the device, read once at the end."""
        was, was_self = model.training, self.training
        model.eval()
        self.eval()
        gen = torch.Generator().manual_seed(0)
        total, n = None, 0
        try:
            for x, _ in batches:
                with autocast(precision, x.device.type):
                    loss, _ = self(model, x, None, gen)
                total = loss.float() * len(x) + (total if total is not None else 0)
                n += len(x)
        finally:
            model.train(was)
            self.train(was_self)
        mse = float(total) / n if n else float("nan")
        return {"mae_mse": mse, "loss": mse, "n": n}

    def train_flops(self, model_cfg: ViTConfig, image_size: int | None = None) -> int:
        """FLOPs of one training step's forward and backward pass for one image: the encoder on the visible tokens
        and the decoder on all of them (the loop's compute record), counted on the meta device (nothing is computed)."""
        from torch.utils.flop_counter import FlopCounterMode

        from vitkit.models.registry import build_model

        cfg = dataclasses.replace(model_cfg, image_size=image_size) if image_size is not None else model_cfg
        h, w = (cfg.image_size, cfg.image_size) if isinstance(cfg.image_size, int) else cfg.image_size
        counter = FlopCounterMode(display=False)
        with torch.device("meta"):
            model = build_model(cfg).train()
            objective = type(self)(cfg.width, cfg.patch_size, cfg.in_chans, cfg.grid, cfg.num_prefix_tokens,
                                   **self.options, **self.extra)
            with counter:
                objective(model, torch.empty(1, cfg.in_chans, h, w))[0].backward()
        return counter.get_total_flops()
