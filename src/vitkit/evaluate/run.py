"""`vitkit eval`: any loadable model on any dataset split."""
from __future__ import annotations

from pathlib import Path

from vitkit.config import DataConfig
from vitkit.convert.load import load_model
from vitkit.data.datasets import load_dataset
from vitkit.data.loader import eval_stream
from vitkit.evaluate.classify import evaluate


def data_config_for(model, data: str, data_dir: str | None = None, resolution: int | None = None,
                    normalize: str | None = None) -> DataConfig:
    """The evaluation pipeline a model was trained with (its recorded preprocessing), else Google's."""
    prep = getattr(model, "preprocess", None) or {}
    size = model.config.image_size
    size = size if isinstance(size, int) else size[0]
    return DataConfig(name=data, data_dir=data_dir, image_size=resolution or size,
                      normalize=normalize or prep.get("normalize", "google"), val_fraction=0.1, download=True)


def eval_model(src: str | Path, data: str, split: str = "test", data_dir: str | None = None, batch_size: int = 256,
               resolution: int | None = None, precision: str = "fp32", normalize: str | None = None) -> dict:
    model = load_model(src, image_size=resolution)
    cfg = data_config_for(model, data, data_dir, resolution, normalize)
    ds = load_dataset(cfg)
    k = getattr(model.config, "num_classes", 0)
    if k != ds.num_classes:
        raise ValueError(f"{src}: the model has {k} classes but {data} has {ds.num_classes}; fine-tune it first "
                         f"(`vitkit finetune {src} --data {data}`)")
    part = {"train": ds.train, "val": ds.val, "test": ds.test}[split]
    res = evaluate(model, eval_stream(part, cfg, model.config.in_chans, batch_size), precision)
    res["classes"] = ds.classes
    return res


def fewshot_model(src: str | Path, data: str, shots: list[int], seeds: int = 3, l2: float | None = None,
                  data_dir: str | None = None, batch_size: int = 256, precision: str = "fp32",
                  resolution: int | None = None) -> dict:
    """Few-shot linear evaluation of a model's frozen pre-logits features: the training split's and the
    test split's features are computed once and reused for every shot count and seed."""
    from vitkit.evaluate.fewshot import DEFAULT_L2, extract_features, fewshot_eval

    model = load_model(src, image_size=resolution)
    cfg = data_config_for(model, data, data_dir, resolution)
    ds = load_dataset(cfg)
    chans = model.config.in_chans
    train_x, train_y = extract_features(model, eval_stream(ds.train, cfg, chans, batch_size), precision)
    test_x, test_y = extract_features(model, eval_stream(ds.test, cfg, chans, batch_size), precision)
    res = fewshot_eval(train_x, train_y, test_x, test_y, shots, seeds, DEFAULT_L2 if l2 is None else l2)
    res.update({"model": str(src), "data": data})
    return res
