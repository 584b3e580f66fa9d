"""Published names (vitkit/hub.py) through the real download code, against servers the tests start on 127.0.0.1
(tests/servers.py): Google Storage's files (google:PATH), a Hugging Face Hub endpoint (hf-hub:ORG/NAME, timm's
MODEL.TAG, Hugging Face's names), huggingface_hub's own cache. Covered: first download, a cache hit with the server
stopped, offline mode, a corrupt download (nothing left in the cache), a download cut off and retried or resumed.
No test touches the internet: every endpoint points at a local server."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import vitkit
from vitkit import hub
from vitkit.data import labels
from servers import FileServer, HubServer

from test_convert import jitter

# gelu="tanh": the official code's GELU, which .npz files compute (read back exactly)
TINY = dict(num_classes=1000, image_size=32, patch_size=16, width=64, depth=2, heads=2, mlp_dim=128, gelu="tanh")
B16 = "google:imagenet21k+imagenet2012/ViT-B_16"
B16_PATH = "/vit_models/imagenet21k+imagenet2012/ViT-B_16.npz"


@pytest.fixture(autouse=True)
def caches(tmp_path, monkeypatch):
    """Empty caches of this test's own, online, no bars; no endpoint of the real internet reachable by mistake."""
    monkeypatch.setenv("VITKIT_CACHE_DIR", str(tmp_path / "vitkit-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("VITKIT_GOOGLE_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused unless a test serves
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for var in ("HF_HUB_OFFLINE", "VITKIT_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("VITKIT_PROGRESS", "0")


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return jitter(vitkit.create_model("ViT-Ti/16", **{**TINY, **kw}), scale=0.3)


def npz_bytes(model, tmp_path, name="m.npz"):
    vitkit.save_model(model, tmp_path / name, format="npz")
    return (tmp_path / name).read_bytes()


def same_logits(a, b, size=32):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    ya, yb = getattr(ya, "logits", ya), getattr(yb, "logits", yb)
    return (ya - yb).abs().max().item()


def gets(server, path=None):
    return [r for r in server.requests if r.method == "GET" and (path is None or r.path == path)]


# --- google:PATH: Google Storage's .npz files ------------------------------------------------------------------------

def test_google_name_downloads_once_then_loads_from_the_cache_with_the_server_stopped(tmp_path, monkeypatch):
    model = tiny()
    with FileServer({B16_PATH: npz_bytes(model, tmp_path)}) as gcs:
        monkeypatch.setenv("VITKIT_GOOGLE_ENDPOINT", gcs.url)
        loaded, card = vitkit.load(B16)
        assert same_logits(loaded, model) < 1e-5
        assert [r.method for r in gcs.requests] == ["HEAD", "GET"]
        assert gcs.requests[1].path == B16_PATH  # "+" reached the server as itself ("%2B" in the URL)
        assert card.source == B16
        assert card.class_names[281] == "tabby" and len(card.class_names) == 1000  # ImageNet-1k's, by hand
        again = vitkit.load(B16).model  # cached: no request at all
        assert len(gcs.requests) == 2 and same_logits(again, model) < 1e-5
    # the server is gone; the cache answers, online or offline
    assert same_logits(vitkit.load(B16).model, model) < 1e-5
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert same_logits(vitkit.load(B16).model, model) < 1e-5
    cached = hub.cache_dir() / "google" / B16_PATH.lstrip("/")
    record = json.loads(cached.with_name(cached.name + ".json").read_text())
    assert record["md5"] == record["server_md5"] and record["size"] == cached.stat().st_size


def test_offline_without_the_file_is_one_line_naming_the_name_the_cache_and_how(tmp_path, monkeypatch):
    with FileServer({B16_PATH: npz_bytes(tiny(), tmp_path)}) as gcs:
        monkeypatch.setenv("VITKIT_GOOGLE_ENDPOINT", gcs.url)
        monkeypatch.setenv("VITKIT_OFFLINE", "1")
        with pytest.raises(hub.DownloadError) as err:
            vitkit.load(B16)
        assert gcs.requests == []  # offline means no network call
    msg = str(err.value)
    assert B16 in msg and str(hub.cache_dir() / "google") in msg and "curl" in msg and "\n" not in msg


def test_a_corrupt_download_is_deleted_and_nothing_is_cached(tmp_path, monkeypatch):
    good = npz_bytes(tiny(), tmp_path)
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    cached = hub.cache_dir() / "google" / B16_PATH.lstrip("/")
    with FileServer({B16_PATH: bytes(bad)}) as gcs:
        monkeypatch.setenv("VITKIT_GOOGLE_ENDPOINT", gcs.url)
        import hashlib

        # a pinned sha256 (of the good file) that the bytes served do not have
        monkeypatch.setattr(hub, "_pinned", lambda text: hashlib.sha256(good).hexdigest())
        with pytest.raises(hub.DownloadError, match="corrupt.*sha256.*deleted, nothing was cached"):
            vitkit.load(B16)
        assert not cached.exists() and not cached.with_name(cached.name + ".incomplete").exists()
        gcs.files[B16_PATH] = good  # the server serves the right bytes: the next try succeeds
        vitkit.load(B16)
    assert cached.read_bytes() == good


def test_a_download_whose_md5_differs_from_what_google_storage_reports_is_refused(tmp_path, monkeypatch):
    import servers

    good = npz_bytes(tiny(), tmp_path)
    real = servers._digests
    monkeypatch.setattr(servers, "_digests", lambda content: real(content + b"x"))  # the server reports another MD5
    with FileServer({B16_PATH: good}) as gcs:
        monkeypatch.setenv("VITKIT_GOOGLE_ENDPOINT", gcs.url)
        with pytest.raises(hub.DownloadError, match="MD5 .* not the .* the server reports"):
            vitkit.load(B16)
    assert not (hub.cache_dir() / "google" / B16_PATH.lstrip("/")).exists()


def test_a_partial_download_of_a_file_the_server_since_replaced_starts_again(tmp_path, monkeypatch):
    data = npz_bytes(tiny(), tmp_path)
    cached = hub.cache_dir() / "google" / B16_PATH.lstrip("/")
    cached.parent.mkdir(parents=True)
    part = cached.with_name(cached.name + ".incomplete")
    part.write_bytes(b"x" * 1000)  # the beginning of an older version of the file
    part.with_name(part.name + ".json").write_text(json.dumps({"etag": '"an-older-etag"'}))
    with FileServer({B16_PATH: data}) as gcs:
        monkeypatch.setenv("VITKIT_GOOGLE_ENDPOINT", gcs.url)
        vitkit.load(B16)
    (get,) = gets(gcs)
    assert "range" not in get.headers and cached.read_bytes() == data


def test_an_interrupted_download_resumes_with_a_range_request(tmp_path, monkeypatch):
    model = tiny()
    data = npz_bytes(model, tmp_path)
    cached = hub.cache_dir() / "google" / B16_PATH.lstrip("/")
    cached.parent.mkdir(parents=True)
    half = len(data) // 2
    with FileServer({B16_PATH: data}) as gcs:
        part = cached.with_name(cached.name + ".incomplete")  # what a killed download leaves: the bytes, the ETag they began with
        part.write_bytes(data[:half])
        part.with_name(part.name + ".json").write_text(json.dumps({"etag": f'"{__import__("hashlib").md5(data).hexdigest()}"'}))
        monkeypatch.setenv("VITKIT_GOOGLE_ENDPOINT", gcs.url)
        loaded = vitkit.load(B16).model
    (get,) = gets(gcs)
    assert get.headers.get("range") == f"bytes={half}-"
    assert cached.read_bytes() == data and same_logits(loaded, model) < 1e-5


@pytest.mark.parametrize("how", ["cut", "reset"])
def test_a_download_cut_off_halfway_is_retried(tmp_path, monkeypatch, how):
    """A connection closed early is retried by huggingface_hub's http_get within the call; one reset fails the call
    in one line and leaves no file in the cache, and the next call completes it."""
    model = tiny()
    data = npz_bytes(model, tmp_path)
    cached = hub.cache_dir() / "google" / B16_PATH.lstrip("/")
    with FileServer({B16_PATH: data}) as gcs:
        monkeypatch.setenv("VITKIT_GOOGLE_ENDPOINT", gcs.url)
        getattr(gcs, f"{how}_once")[B16_PATH] = len(data) // 2
        if how == "reset":
            with pytest.raises(hub.DownloadError, match="could not download .*(reset|resumes)") as err:
                vitkit.load(B16)
            assert "\n" not in str(err.value) and not cached.exists()
        loaded = vitkit.load(B16).model
        assert len(gets(gcs)) == 2  # the cut-off GET, then one that completed it
    assert cached.read_bytes() == data and same_logits(loaded, model) < 1e-5


def test_an_unknown_google_file_is_one_line(monkeypatch):
    with FileServer({}) as gcs:
        monkeypatch.setenv("VITKIT_GOOGLE_ENDPOINT", gcs.url)
        with pytest.raises(hub.DownloadError, match="no such file at .*ViT-Q_16.npz; `vitkit models --pretrained`"):
            vitkit.load("google:imagenet21k/ViT-Q_16")


# --- hf-hub:ORG/NAME: Hugging Face repositories ----------------------------------------------------------------------

def hf_repo(model, tmp_path, name="hf", class_names=None):
    """The files of a transformers-format repository (config.json, model.safetensors, preprocessor_config.json)."""
    out = tmp_path / name
    vitkit.save_model(model, out, format="hf", class_names=class_names, preprocess={"normalize": "imagenet"})
    return {p.name: p.read_bytes() for p in out.iterdir()}


def timm_repo(tmp_path, arch="vit_tiny_patch16_224", seed=0, **kw):
    """A timm model and the files timm's own push_to_hub writes for it (config.json, model.safetensors)."""
    timm = pytest.importorskip("timm")
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, **kw).eval()
    jitter(model, scale=0.05)
    out = tmp_path / f"timm-{arch}-{seed}"
    save_for_hf(model, str(out))
    return model, {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def test_hf_hub_name_downloads_then_loads_from_the_cache_with_the_server_stopped_and_offline(tmp_path, monkeypatch):
    model = tiny(num_classes=3)
    files = hf_repo(model, tmp_path, class_names=["cat", "dog", "bird"])
    with HubServer({"acme/vit-tiny": files}) as hubsrv:
        monkeypatch.setenv("HF_ENDPOINT", hubsrv.url)
        loaded, card = vitkit.load("hf-hub:acme/vit-tiny")
        assert same_logits(loaded, model) < 1e-5
        assert card.class_names == ["cat", "dog", "bird"] and card.preprocess.normalize == "imagenet"
        fetched = {r.path.rsplit("/", 1)[1] for r in gets(hubsrv)}
        assert fetched == {"config.json", "model.safetensors", "preprocessor_config.json"}  # no pytorch_model.bin
        commit = hubsrv.commit("acme/vit-tiny")
        seen = len(hubsrv.requests)
        with monkeypatch.context() as offline:  # offline: the cache, and no request even with the server up
            offline.setenv("HF_HUB_OFFLINE", "1")
            assert same_logits(vitkit.load("hf-hub:acme/vit-tiny").model, model) < 1e-5
            with pytest.raises(hub.DownloadError) as err:
                vitkit.load("hf-hub:acme/other")
        assert len(hubsrv.requests) == seen
    snapshot = tmp_path / "hf-cache" / "models--acme--vit-tiny" / "snapshots" / commit  # huggingface_hub's own layout
    assert (snapshot / "model.safetensors").is_file()
    assert same_logits(vitkit.load("hf-hub:acme/vit-tiny").model, model) < 1e-5  # server stopped: the cache
    msg = str(err.value)
    assert "hf-hub:acme/other" in msg and str(tmp_path / "hf-cache") in msg and "hf download acme/other" in msg


def test_hf_hub_revisions_gated_repositories_and_unknown_names(tmp_path, monkeypatch):
    main, v1 = tiny(seed=0, num_classes=3), tiny(seed=1, num_classes=3)
    files = hf_repo(main, tmp_path, "main")
    with HubServer({"acme/vit": files, "acme/gated": files}, gated={"acme/gated": "secret"},
                   revisions={"acme/vit": {"v1": hf_repo(v1, tmp_path, "v1")}}) as hubsrv:
        monkeypatch.setenv("HF_ENDPOINT", hubsrv.url)
        assert same_logits(vitkit.load("hf-hub:acme/vit@v1").model, v1) < 1e-5
        assert same_logits(vitkit.load("hf-hub:acme/vit").model, main) < 1e-5
        with pytest.raises(hub.DownloadError, match="gated repository.*HF_TOKEN"):
            vitkit.load("hf-hub:acme/gated")
        monkeypatch.setenv("HF_TOKEN", "secret")
        assert same_logits(vitkit.load("hf-hub:acme/gated").model, main) < 1e-5
        with pytest.raises(hub.DownloadError, match="no such revision"):
            vitkit.load("hf-hub:acme/vit@v9")
        with pytest.raises(hub.DownloadError, match="no such repository"):
            vitkit.load("hf-hub:acme/nothing")
    with pytest.raises(ValueError, match="hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION"):
        vitkit.load("hf-hub:no-slash")


# --- timm's names, Hugging Face's names, create_model(pretrained=True) -----------------------------------------------

@pytest.mark.parametrize("with_timm", [True, False])
def test_timm_names_load_timm_format_repositories(tmp_path, monkeypatch, with_timm):
    """timm's MODEL.TAG through timm's pretrained config (its hf_hub_id) or, without timm, the Hub repo timm/MODEL.TAG;
    logits equal timm's own model's, ImageNet's names from the tag, timm's mean / std read from its config.json."""
    ref, files = timm_repo(tmp_path)
    if not with_timm:
        monkeypatch.setitem(sys.modules, "timm", None)  # import timm fails: the name is resolved without it
    with HubServer({"timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k": files}) as hubsrv:
        monkeypatch.setenv("HF_ENDPOINT", hubsrv.url)
        loaded, card = vitkit.load("vit_tiny_patch16_224.augreg_in21k_ft_in1k")
        default = vitkit.create_model("vit_tiny_patch16_224", pretrained=True)  # timm's default tag: the same repo
    assert same_logits(loaded, ref, 224) < 1e-4 and same_logits(default, ref, 224) < 1e-4
    assert card.class_names[281] == "tabby" and card.preprocess.normalize == "google"  # timm's 0.5 / 0.5


def test_a_cached_timm_repository_loads_at_once_with_the_hub_down(tmp_path, monkeypatch):
    """Files the repository lacks (model.safetensors or pytorch_model.bin, preprocessor_config.json) are known absent from
    the cache's markers: not asked for again, where each would cost huggingface_hub's retries (~25 s) with the Hub down."""
    import time

    ref, files = timm_repo(tmp_path)
    files.pop("model.safetensors", None)
    if "pytorch_model.bin" not in files:
        files["pytorch_model.bin"] = _torch_bytes(ref.state_dict())
    with HubServer({"acme/timm-old": files}) as hubsrv:
        monkeypatch.setenv("HF_ENDPOINT", hubsrv.url)
        vitkit.load("hf-hub:acme/timm-old")
    start = time.perf_counter()
    loaded = vitkit.load("hf-hub:acme/timm-old").model  # online, the server gone
    assert time.perf_counter() - start < 10 and same_logits(loaded, ref, 224) < 1e-4


def _torch_bytes(sd):
    buf = __import__("io").BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


def test_create_model_pretrained_takes_our_names_hf_names_and_a_new_head(tmp_path, monkeypatch):
    model = tiny()
    with FileServer({B16_PATH: npz_bytes(model, tmp_path)}) as gcs, HubServer({"google/vit-base-patch16-224": hf_repo(model, tmp_path)}) as hubsrv:
        monkeypatch.setenv("VITKIT_GOOGLE_ENDPOINT", gcs.url)
        monkeypatch.setenv("HF_ENDPOINT", hubsrv.url)
        ours = vitkit.create_model("ViT-B/16", pretrained=True)  # the paper's ImageNet-21k -> ImageNet-1k file
        assert same_logits(ours, model) < 1e-5 and [r.path for r in gets(gcs)] == [B16_PATH]
        assert same_logits(vitkit.create_model("google/vit-base-patch16-224", pretrained=True), model) < 1e-5
        ten = vitkit.create_model("ViT-B/16", pretrained=True, num_classes=10, image_size=48)
    assert ten.head.out_features == 10 and ten.config.image_size == 48 and not ten.head.weight.any()
    with pytest.raises(ValueError, match="in_chans= is for models trained from scratch"):
        vitkit.create_model("ViT-B/16", pretrained=True, in_chans=1)
    with pytest.raises(ValueError, match="the weights are a .* not a ViT-L/16"):
        vitkit.create_model("ViT-L/16", pretrained=str(tmp_path / "hf"))  # weights of another architecture


def test_a_local_path_wins_over_a_name(tmp_path, monkeypatch):
    model = tiny(num_classes=3)
    monkeypatch.chdir(tmp_path)
    vitkit.save_model(model, "vit_base_patch16_224")  # a directory that happens to carry timm's name
    assert same_logits(vitkit.load("vit_base_patch16_224").model, model) < 1e-5  # no server: it never asked one


def test_names_are_parsed_without_the_network():
    assert hub.parse("hf-hub:timm/vit_base_patch16_224.augreg_in21k@abc123").revision == "abc123"
    n = hub.parse("google:augreg/R26_S_32-i21k-300ep-lr_0.001-aug_medium2-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384")
    assert (n.variant, n.labels) == ("R26+ViT-S/32", "imagenet1k")
    assert hub.parse("google:imagenet21k/ViT-H_14").labels is None  # Google zeroed the raw ImageNet-21k heads: no classes
    assert hub.parse("google/vit-base-patch16-224-in21k").labels is None
    assert hub.parse("google:augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0").labels == "imagenet21k"  # trained
    assert hub.parse("google:imagenet21k+imagenet2012/ViT-L_16-224").variant == "ViT-L/16"
    for bad in ("google:", "google:../etc/passwd"):
        with pytest.raises(ValueError, match="google:PATH"):
            hub.parse(bad)
    with pytest.raises(ValueError, match="(unknown timm pretrained tag|timm has no pretrained tag) 'augreg_in21q'.*augreg_in21k"):
        vitkit.load("vit_base_patch16_224.augreg_in21q")
    for typo in ("vit_base_patch16_224.pth", "runs/vit_base_patch16_224.safetensors"):  # a missing file is no timm tag
        assert not hub.is_name(typo)
        with pytest.raises(FileNotFoundError, match="no such file"):
            vitkit.load(typo)


# --- class names ---------------------------------------------------------------------------------------------------

def test_imagenet21k_names_without_timm_are_downloaded_once(monkeypatch):
    lines = [f"class {i}, number {i}" for i in range(21843)]
    lines[0] = "organism, being"  # Google's first ImageNet-21k class (n00004475)
    for mod in ("timm", "timm.data"):  # import timm / from timm.data import ...: ImportError
        monkeypatch.setitem(sys.modules, mod, None)
    labels.imagenet21k.cache_clear()
    try:
        with FileServer({"/" + labels.IMAGENET21K_LEMMAS: "\n".join(lines).encode()}) as gcs:
            monkeypatch.setenv("VITKIT_GOOGLE_ENDPOINT", gcs.url)
            names = labels.names("imagenet21k", 21843)
        assert names[0] == "organism, being" and names[-1] == "class 21842, number 21842"
        labels.imagenet21k.cache_clear()
        assert labels.imagenet21k()[0] == "organism, being"  # server gone: from the cache
    finally:
        labels.imagenet21k.cache_clear()
    assert labels.names("imagenet21k", 1000) is None and labels.names("imagenet1k", 10) is None


def test_a_cached_imagenet21k_model_loads_offline_without_its_class_names(tmp_path, monkeypatch):
    path = "/vit_models/augreg/Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0.npz"
    model = tiny(num_classes=21843, width=16, mlp_dim=32)
    with FileServer({path: npz_bytes(model, tmp_path)}) as gcs:
        monkeypatch.setenv("VITKIT_GOOGLE_ENDPOINT", gcs.url)
        hub.download_url(gcs.url + path, "google" + path, what="the file")  # cached; the class-name list is not
    for mod in ("timm", "timm.data"):
        monkeypatch.setitem(sys.modules, mod, None)
    monkeypatch.setenv("VITKIT_OFFLINE", "1")
    labels.imagenet21k.cache_clear()
    try:
        loaded, card = vitkit.load("google:" + path.removeprefix("/vit_models/").removesuffix(".npz"))
    finally:
        labels.imagenet21k.cache_clear()
    assert card.class_names is None and any(n.startswith("class names left out:") for n in card.report.notes)
    assert same_logits(loaded, model) < 1e-5


def test_imagenet21k_names_from_timm():
    pytest.importorskip("timm")
    names = labels.imagenet21k()
    assert len(names) == 21843 and names[0] == "organism, being"


# --- the command line ------------------------------------------------------------------------------------------------

def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "vitkit", *args], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=300)


def test_offline_predict_on_cached_repositories_gives_transformers_and_timms_top1(tmp_path, monkeypatch):
    """The issue's done-when: HF_HUB_OFFLINE=1 vitkit predict hf-hub:ORG/NAME IMAGE on a model in the Hugging Face cache
    gives transformers' own top-1; the same for a timm-format repository (timm's own top-1); a name not cached: one line."""
    from PIL import Image

    transformers = pytest.importorskip("transformers")
    model = tiny(num_classes=3, image_size=224)
    ref_timm, timm_files = timm_repo(tmp_path, "vit_tiny_patch16_224", num_classes=3)
    with HubServer({"acme/vit": hf_repo(model, tmp_path, class_names=["cat", "dog", "bird"]), "acme/timm-vit": timm_files}) as hubsrv:
        monkeypatch.setenv("HF_ENDPOINT", hubsrv.url)
        vitkit.load("hf-hub:acme/vit")  # into the Hugging Face cache
        vitkit.load("hf-hub:acme/timm-vit")
    rng = np.random.default_rng(0)
    image = tmp_path / "im.png"  # neither square nor the models' size: each library's resize (and timm's crop) at work
    coarse = rng.integers(0, 256, (13, 15, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((300, 260), Image.BICUBIC).save(image)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf-cache"), "VITKIT_CACHE_DIR": str(tmp_path / "vitkit-cache"),
           "HF_ENDPOINT": "http://127.0.0.1:9"}
    snapshots = tmp_path / "hf-cache" / "models--acme--vit" / "snapshots"
    (snap,) = snapshots.iterdir()
    hf_model = transformers.ViTForImageClassification.from_pretrained(snap).eval()
    proc = transformers.AutoImageProcessor.from_pretrained(snap)
    with torch.no_grad():
        want = hf_model.config.id2label[hf_model(**proc(Image.open(image), return_tensors="pt")).logits.argmax(-1).item()]
    res = run_cli("predict", "hf-hub:acme/vit", str(image), "--json", "--device", "cpu", "--precision", "fp32", env=env)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)[0]["top"][0]["class"] == want

    from timm.data import create_transform, resolve_data_config

    tf = create_transform(**resolve_data_config({}, model=ref_timm))  # timm's eval: bicubic to 248, centre crop 224
    with torch.no_grad():
        probs = ref_timm(tf(Image.open(image).convert("RGB"))[None]).softmax(-1)[0]
    res = run_cli("predict", "hf-hub:acme/timm-vit", str(image), "--json", "--device", "cpu", "--precision", "fp32", env=env)
    assert res.returncode == 0, res.stderr
    top = json.loads(res.stdout)[0]["top"]
    assert top[0]["index"] == probs.argmax().item()
    # PIL's bicubic (timm) and torchvision's antialiased tensor bicubic (vitkit) differ by a grey level here and there
    assert max(abs(t["prob"] - probs[t["index"]].item()) for t in top) < 1e-3  # measured: 8.2e-5; without the crop: 5.9e-3

    res = run_cli("predict", "hf-hub:acme/not-cached", str(image), env=env)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "not in the Hugging Face cache" in res.stderr


def test_models_pretrained_lists_the_published_names_with_the_papers_top1(capsys):
    from vitkit.cli import main

    assert main(["models", "--pretrained", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[B16]["paper_top1"] == 83.97 and rows[B16]["image_size"] == 384 and rows[B16]["default"]  # paper Table 5
    assert rows["google:imagenet21k+imagenet2012/ViT-L_16"]["paper_top1"] == 85.15
    assert rows["google:imagenet21k/ViT-H_14"]["data"] == "ImageNet-21k"
    assert rows["vit_base_patch16_224.augreg2_in21k_ft_in1k"]["source"] == "timm"
    assert rows["google/vit-base-patch16-384"]["paper_top1"] == 83.97
    assert main(["models", "--pretrained", "--filter", "R50+ViT-B"]) == 0
    out = capsys.readouterr().out
    assert "google:imagenet21k/R50+ViT-B_16" in out and "ViT-L/16 " not in out
    assert main(["models", "--pretrained", "--filter", "no-such-model"]) == 2


def test_readme_published_snippet_runs(tmp_path, monkeypatch):
    """The README's "Published weights by name" snippet, on stand-ins served under the names it uses."""
    import re
    from pathlib import Path

    model = tiny()
    _, timm_files = timm_repo(tmp_path)
    repos = {"timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k": timm_files, "google/vit-base-patch16-224": hf_repo(model, tmp_path)}
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("## Published weights by name"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    with FileServer({B16_PATH: npz_bytes(model, tmp_path)}) as gcs, HubServer(repos) as hubsrv:
        monkeypatch.setenv("VITKIT_GOOGLE_ENDPOINT", gcs.url)
        monkeypatch.setenv("HF_ENDPOINT", hubsrv.url)
        scope: dict = {}
        exec(compile(code, "README.md (Published weights by name)", "exec"), scope)  # noqa: S102 - our own README
    assert scope["card"].class_names[281] == "tabby" and same_logits(scope["model"], model) < 1e-5
    assert scope["timm_model"].config.name == "ViT-Ti/16" and same_logits(scope["hf_model"], model) < 1e-5
    assert scope["for_pets"].head.out_features == 37


def test_every_download_draws_a_progress_bar(tmp_path, monkeypatch, capfd):
    model = tiny(num_classes=3)
    monkeypatch.setenv("VITKIT_PROGRESS", "1")  # bars even into the test's captured stderr
    with FileServer({B16_PATH: npz_bytes(model, tmp_path)}) as gcs, HubServer({"acme/vit": hf_repo(model, tmp_path)}) as hubsrv:
        monkeypatch.setenv("VITKIT_GOOGLE_ENDPOINT", gcs.url)
        monkeypatch.setenv("HF_ENDPOINT", hubsrv.url)
        vitkit.load(B16)
        vitkit.load("hf-hub:acme/vit")
    err = capfd.readouterr().err
    assert "ViT-B_16.npz" in err and "model.safetensors" in err and "100%" in err
    monkeypatch.setenv("VITKIT_PROGRESS", "0")
    with HubServer({"acme/vit2": hf_repo(model, tmp_path, "quiet")}) as hubsrv:
        monkeypatch.setenv("HF_ENDPOINT", hubsrv.url)
        vitkit.load("hf-hub:acme/vit2")
    assert "model.safetensors" not in capfd.readouterr().err


def test_finetune_and_train_start_from_a_published_name(tmp_path, monkeypatch):
    """`vitkit finetune NAME` and `--set model.init=NAME`: the config check accepts a name, the run starts from its
    weights and records the name."""
    from vitkit.config import apply_overrides, validate
    from vitkit.recipes import get_recipe
    from vitkit.train.finetune import finetune

    model = tiny(num_classes=1000, image_size=16, patch_size=4, width=32, heads=2, mlp_dim=64)
    with FileServer({B16_PATH: npz_bytes(model, tmp_path)}) as gcs:
        monkeypatch.setenv("VITKIT_GOOGLE_ENDPOINT", gcs.url)
        res = finetune(B16, "digits", resolution=8, out=tmp_path / "ft",
                       overrides=["train.steps=2", "train.batch_size=16", "train.progress=false"])
    assert 0 <= res["test"]["top1"] <= 1
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["model"]["init"] == B16
    validate(apply_overrides(get_recipe("quickstart"), [f"model.init={B16}"]))  # cached now; a name passes the check
    with pytest.raises(ValueError, match="no such file or directory; .* or a published name"):
        validate(apply_overrides(get_recipe("quickstart"), ["model.init=/no/such/run"]))
