"""The class names of the label sets published weights were trained on: ImageNet-1k and ImageNet-21k.

- ImageNet-1k ("imagenet1k"): torchvision's names (its weights' metadata, `categories`), in the usual order of the
  1000 WordNet ids: index 281 is "tabby".
- ImageNet-21k ("imagenet21k"): the 21,843 classes of Google's ImageNet-21k releases (ViT, BiT), in Google's order
  (sorted WordNet ids). From timm's copy of the WordNet lemmas when timm is installed (no download), else from the
  lemmas file Google publishes beside BiT's weights, downloaded once into vitkit's cache (vitkit.hub.download_url).
"""
from __future__ import annotations

import functools

LABEL_SETS = {"imagenet1k": 1000, "imagenet21k": 21843}
# Google's list of the ImageNet-21k lemmas, one line per class in the order of the released heads (BiT's README)
IMAGENET21K_LEMMAS = "bit_models/imagenet21k_wordnet_lemmas.txt"


@functools.cache
def imagenet1k() -> tuple[str, ...]:
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


@functools.cache
def imagenet21k() -> tuple[str, ...]:
    try:
        from timm.data import ImageNetInfo
    except ImportError:
        return _imagenet21k_downloaded()
    info = ImageNetInfo("imagenet-21k-goog")
    return tuple(info.index_to_description(i) for i in range(info.num_classes()))


def _imagenet21k_downloaded() -> tuple[str, ...]:
    from vitkit.hub import download_url, google_url

    path = download_url(google_url(IMAGENET21K_LEMMAS), IMAGENET21K_LEMMAS, what="the ImageNet-21k class names")
    names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if len(names) != LABEL_SETS["imagenet21k"]:
        from vitkit.hub import DownloadError

        raise DownloadError(f"{path}: {len(names)} class names, not ImageNet-21k's {LABEL_SETS['imagenet21k']}; delete the file "
                            f"to download it again")
    return names


def names(label_set: str | None, num_classes: int) -> list[str] | None:
    """The names of `label_set` if a head of `num_classes` outputs is one of its heads, else None."""
    if label_set not in LABEL_SETS or LABEL_SETS[label_set] != num_classes:
        return None
    return list(imagenet1k() if label_set == "imagenet1k" else imagenet21k())
