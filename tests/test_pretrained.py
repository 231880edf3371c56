"""``pretrained=True``: released-layout files served by a loopback HTTP server (127.0.0.1) in place of the
released links, through timm's download-and-cache path and boat-vit's safe reader.

Every test points the cache at a fresh folder (``TORCH_HOME``, which timm's and torch's cache honour), so no
test reaches the network or the user's cache.
"""
import argparse
import dataclasses
import http.server
import json
import os
import threading
from pathlib import Path

import pytest
import timm
import torch
from timm.models import _registry

from boat_vit.cli import main as cli_main
from boat_vit.errors import DownloadError
from boat_vit.models import download_pretrained, weights_filter
from boat_vit.weights import load_weights
from test_boat_cswin import released_layout
from test_boat_swin import _save_released
from tiny_data import SEG_TRAIN_ARGS, SWIN, TINY_MODEL, TINY_SWIN, train_args

CSWIN = "boat_cswin_tiny_224"
ARGS = {  # small configurations with timm's default 1000 classes
    SWIN: dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)),  # the reference vectors' mini model
    CSWIN: dict(embed_dim=16, depths=(1, 2, 1, 1), num_heads=(2, 2, 4, 4)),
}
IMAGENET_CLASSES = 1000
# The links of the released code's README (github.com/mahaoyuHKU/pytorch-boat, commit b94a66c), as written there
RELEASED_README_LINKS = {
    "boat_swin_tiny_patch4_window7_224": "https://www.dropbox.com/s/xa94uewsrvjglnn/tiny.pth?dl=0",
    "boat_swin_small_patch4_window7_224": "https://www.dropbox.com/s/7ih1zvii3bvdcgd/small.pth?dl=0",
    "boat_swin_base_patch4_window7_224": "https://www.dropbox.com/s/70hr7h0smcr0gr9/base.pth?dl=0",
    "boat_cswin_tiny_224": "https://www.dropbox.com/s/rsmtu6r0v2lt0y5/cswin_tiny.pth.tar?dl=0",
    "boat_cswin_small_224": "https://www.dropbox.com/s/cnl00d1faxxoi19/cswin_small.pth.tar?dl=0",
    "boat_cswin_base_224": "https://www.dropbox.com/s/92sr8r8zhng1mqg/cswin_base.pth.tar?dl=0",
}


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files``; a path in ``server.cut_short`` announces its whole length and sends half."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.path in self.server.cut_short else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A loopback HTTP server in a thread: ``files`` to serve by path, ``requests`` it saw."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.requests, httpd.cut_short = {}, [], set()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """timm's (torch.hub's) checkpoint cache, in a fresh ``TORCH_HOME``."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def _serve_as_default(monkeypatch, name: str, url: str) -> str:
    """Points the registered pretrained config of ``name`` at ``url`` (its cache file name kept); returns that name."""
    cfg = _registry._model_pretrained_cfgs[name]
    served = dataclasses.replace(cfg, url=(url, cfg.url[1]))
    for key in (name, f"{name}.{cfg.tag}"):
        monkeypatch.setitem(_registry._model_pretrained_cfgs, key, served)
    return cfg.url[1]


def _seeded(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=generator) * 0.02 if v.is_floating_point() else v.clone()
            for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def released_files(reference, tmp_path_factory) -> dict[str, Path]:
    """Released-layout files of the small configurations: Swin-style ``{'model', 'config': <yacs>}`` (the
    reference weights of the released code, with a 1000-class head) and CSWin-style ``{'state_dict',
    'state_dict_ema', 'args': <Namespace>}`` whose EMA weights differ from the others."""
    folder = tmp_path_factory.mktemp("released")
    swin = dict(reference("boat_swin_mini")["state_dict"])
    generator = torch.Generator().manual_seed(1)
    swin["head.weight"] = torch.randn(IMAGENET_CLASSES, swin["head.weight"].shape[1], generator=generator)
    swin["head.bias"] = torch.randn(IMAGENET_CLASSES, generator=generator)
    with pytest.MonkeyPatch.context() as patch:
        _save_released(folder / "tiny.pth", swin, patch)

    model = timm.create_model(CSWIN, **ARGS[CSWIN])
    plain, ema = _seeded(model, 2), _seeded(model, 3)
    layouts = []
    for weights in (plain, ema):
        model.load_state_dict(weights)
        layouts.append({k: v.clone() for k, v in released_layout(model).items()})
    args = argparse.Namespace(model="CSWin_64_12211_tiny_224", lr=2e-3, model_ema=True)
    torch.save({"epoch": 309, "state_dict": layouts[0], "state_dict_ema": layouts[1], "args": args},
               folder / "cswin_tiny.pth.tar")
    return {SWIN: folder / "tiny.pth", CSWIN: folder / "cswin_tiny.pth.tar"}


def _hand_loaded(name: str, path: Path, **kwargs) -> dict[str, torch.Tensor]:
    model = timm.create_model(name, **dict(ARGS[name], **kwargs))
    load_weights(model, path, weights_filter(model), reset_head=True)
    return model.state_dict()


def _assert_same(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor], skip=()) -> None:
    assert set(expected) == set(actual)
    for key, tensor in expected.items():
        if not key.startswith(tuple(skip)):
            assert torch.equal(actual[key], tensor), key


def test_the_default_configs_download_the_released_links():
    cache_names = set()
    for name, link in RELEASED_README_LINKS.items():
        cfg = timm.models.get_pretrained_cfg(name)
        url, cache_name = cfg.url
        assert url == link.replace("?dl=0", "?dl=1")  # Dropbox's direct-download form of the share link
        assert cfg.custom_load and cache_name.startswith(name)
        cache_names.add(cache_name)
    assert len(cache_names) == len(RELEASED_README_LINKS)
    assert sorted(timm.list_models("boat*", pretrained=True)) == sorted(f"{n}.in1k" for n in RELEASED_README_LINKS)


@pytest.mark.parametrize("name", [SWIN, CSWIN])
def test_pretrained_true_downloads_once_and_loads_what_a_hand_load_gives(name, released_files, server, cache,
                                                                         monkeypatch, capsys):
    server.files["/weights"] = released_files[name].read_bytes()
    cache_name = _serve_as_default(monkeypatch, name, server.url + "/weights")

    model = timm.create_model(name, pretrained=True, **ARGS[name])
    progress = capsys.readouterr().err
    assert "100%" in progress  # torch.hub's progress bar while downloading
    _assert_same(_hand_loaded(name, released_files[name]), model.state_dict())
    assert sorted(os.listdir(cache)) == [cache_name]

    again = timm.create_model(name, pretrained=True, **ARGS[name])
    _assert_same(model.state_dict(), again.state_dict())
    assert server.requests == ["/weights"]  # the second model came from the cache
    assert "100%" not in capsys.readouterr().err


def test_cswin_files_give_their_ema_weights(released_files, server, cache, monkeypatch):
    server.files["/weights"] = released_files[CSWIN].read_bytes()
    _serve_as_default(monkeypatch, CSWIN, server.url + "/weights")
    model = timm.create_model(CSWIN, pretrained=True, **ARGS[CSWIN])
    saved = torch.load(released_files[CSWIN], weights_only=True)
    assert torch.equal(model.state_dict()["patch_embed.proj.weight"],
                       saved["state_dict_ema"]["stage1_conv_embed.0.weight"])
    assert not torch.equal(model.state_dict()["patch_embed.proj.weight"],
                           saved["state_dict"]["stage1_conv_embed.0.weight"])


@pytest.mark.parametrize("name", [SWIN, CSWIN])
def test_num_classes_10_starts_the_classifier_afresh_the_timm_way(name, released_files, server, cache, monkeypatch):
    server.files["/weights"] = released_files[name].read_bytes()
    _serve_as_default(monkeypatch, name, server.url + "/weights")
    built = {}
    for way, kwargs in (("download", dict(pretrained=True)), ("fresh", {}),
                        ("timm's file path", dict(pretrained=True,
                                                  pretrained_cfg_overlay=dict(file=str(released_files[name]))))):
        torch.manual_seed(0)
        built[way] = timm.create_model(name, num_classes=10, **kwargs, **ARGS[name]).state_dict()
    _assert_same(built["timm's file path"], built["download"])  # timm's own loading of the same file
    for key in ("head.fc.weight", "head.fc.bias"):  # the classifier as the model initialised it
        assert built["download"][key].shape[0] == 10 and torch.equal(built["download"][key], built["fresh"][key])
    _assert_same(_hand_loaded(name, released_files[name], num_classes=10), built["download"], skip=["head.fc."])


@pytest.mark.parametrize("name", [SWIN, CSWIN])
def test_timm_adaptations_apply_to_the_download(name, released_files, server, cache, monkeypatch):
    """What timm's own pretrained test asks of every model: one input channel, 5 or no classes, features only."""
    server.files["/weights"] = released_files[name].read_bytes()
    _serve_as_default(monkeypatch, name, server.url + "/weights")
    hand = _hand_loaded(name, released_files[name])
    for num_classes in (5, 0):
        model = timm.create_model(name, pretrained=True, in_chans=1, num_classes=num_classes, **ARGS[name])
        stem = model.state_dict()["patch_embed.proj.weight"]  # timm sums the RGB filters of a 1-channel stem
        assert torch.allclose(stem, hand["patch_embed.proj.weight"].sum(dim=1, keepdim=True))
        _assert_same({k: v for k, v in hand.items() if not k.startswith(("head.fc.", "patch_embed.proj.weight"))},
                     {k: v for k, v in model.state_dict().items() if not k.startswith(("head.fc.",
                                                                                        "patch_embed.proj.weight"))})
    features = timm.create_model(name, pretrained=True, features_only=True, **ARGS[name])
    assert torch.equal(features.state_dict()["patch_embed.proj.weight"], hand["patch_embed.proj.weight"])
    assert server.requests == ["/weights"]


def test_a_mirror_url_in_the_overlay_is_read_the_same_way(released_files, server, cache, tmp_path):
    server.files["/mirror/cswin_tiny.pth.tar"] = released_files[CSWIN].read_bytes()
    model = timm.create_model(CSWIN, pretrained=True, **ARGS[CSWIN],
                              pretrained_cfg_overlay=dict(url=server.url + "/mirror/cswin_tiny.pth.tar"))
    _assert_same(_hand_loaded(CSWIN, released_files[CSWIN]), model.state_dict())
    assert os.listdir(cache) == ["cswin_tiny.pth.tar"]
    elsewhere = tmp_path / "elsewhere"  # timm's cache_dir= takes the download elsewhere
    timm.create_model(CSWIN, pretrained=True, cache_dir=elsewhere, **ARGS[CSWIN],
                      pretrained_cfg_overlay=dict(url=server.url + "/mirror/cswin_tiny.pth.tar"))
    assert os.listdir(elsewhere) == ["cswin_tiny.pth.tar"] and len(server.requests) == 2


def test_pretrained_strict_false_reaches_the_download_path(released_files, server, cache, monkeypatch):
    server.files["/weights"] = released_files[SWIN].read_bytes()
    _serve_as_default(monkeypatch, SWIN, server.url + "/weights")
    with pytest.raises(RuntimeError, match="Unexpected key"):  # FSLA weights with no place in the model
        timm.create_model(SWIN, pretrained=True, fsla_stages=False, **ARGS[SWIN])
    model = timm.create_model(SWIN, pretrained=True, fsla_stages=False, pretrained_strict=False, **ARGS[SWIN])
    _assert_same({k: v for k, v in _hand_loaded(SWIN, released_files[SWIN]).items() if k in model.state_dict()},
                 model.state_dict())


def _dead_port() -> str:
    """A loopback URL on which nothing listens."""
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    port = httpd.server_address[1]
    httpd.server_close()
    return f"http://127.0.0.1:{port}"


class _Payload:
    """Pickles as a call of ``os.system``: reading the download must never run it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("failure", ["cut short", "no such file", "a web page", "nothing listening", "unsafe pickle"])
def test_a_failed_download_is_one_line_and_leaves_nothing_in_the_cache(failure, released_files, server, cache,
                                                                       monkeypatch, tmp_path):
    body = released_files[SWIN].read_bytes()
    if failure == "cut short":
        server.files["/weights"] = body
        server.cut_short.add("/weights")
    elif failure == "a web page":
        server.files["/weights"] = b"<!DOCTYPE html><html><body>This file is no longer available</body></html>"
    elif failure == "unsafe pickle":
        torch.save({"model": _Payload(tmp_path / "pwned")}, tmp_path / "payload.pth")
        server.files["/weights"] = (tmp_path / "payload.pth").read_bytes()
    url = (_dead_port() if failure == "nothing listening" else server.url) + "/weights"
    _serve_as_default(monkeypatch, SWIN, url)

    with pytest.raises(DownloadError) as caught:
        timm.create_model(SWIN, pretrained=True, **ARGS[SWIN])
    message = str(caught.value)
    assert "\n" not in message and url in message and SWIN in message, message
    assert message.endswith("download the file by hand and pass pretrained_cfg_overlay=dict(file=PATH)"), message
    assert not cache.exists() or not os.listdir(cache)  # neither the file nor torch.hub's partial one
    assert not (tmp_path / "pwned").exists()


def test_the_command_line_names_its_own_flag(server, cache, monkeypatch, capsys):
    _serve_as_default(monkeypatch, SWIN, _dead_port() + "/weights")
    assert cli_main(["eval", "--model", SWIN, "--pretrained", "--workers", "0"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("boat-vit eval: error: cannot download the weights of "), lines
    assert lines[0].endswith("download the file by hand and pass --pretrained-file PATH")
    with pytest.raises(DownloadError):
        download_pretrained(SWIN)


def test_pretrained_on_the_command_line_loads_the_download(shapes_folder, ade_shapes, server, cache, monkeypatch,
                                                           tmp_path, capsys):
    """``train``, ``show-clusters`` and ``seg-train`` take ``--pretrained``: the same download, the same reader."""
    tiny = timm.create_model(SWIN, **json.loads(TINY_MODEL[3]))
    torch.save({"model": _seeded(tiny, 4)}, tmp_path / "tiny.pth")
    server.files["/tiny"] = (tmp_path / "tiny.pth").read_bytes()
    _serve_as_default(monkeypatch, SWIN, server.url + "/tiny")

    assert cli_main(train_args(shapes_folder, tmp_path / "run", 1, "--pretrained")) == 0
    out = capsys.readouterr().out
    loaded = len(tiny.state_dict()) - 2  # all but the classifier, which the 2 classes start afresh
    assert f"{loaded} tensors loaded, 2 left initial, 0 unused; the classifier of another size starts afresh" in out
    show = ["show-clusters", "--model", SWIN, "--model-kwargs", TINY_MODEL[3], "--pretrained", "--img-size", "16",
            "--output", str(tmp_path / "clusters.png")]
    assert cli_main(show) == 0
    assert "predicted" in capsys.readouterr().out
    assert server.requests == ["/tiny"]

    backbone = timm.create_model(SWIN, **TINY_SWIN)
    torch.save({"model": _seeded(backbone, 5)}, tmp_path / "backbone.pth")
    server.files["/backbone"] = (tmp_path / "backbone.pth").read_bytes()
    for path in cache.iterdir():
        path.unlink()
    _serve_as_default(monkeypatch, SWIN, server.url + "/backbone")
    seg = ["seg-train", *SEG_TRAIN_ARGS, "--data", str(ade_shapes), "--output", str(tmp_path / "seg"), "--pretrained",
           "--iterations", "1", "--eval-interval", "1", "--checkpoint-interval", "1"]
    assert cli_main(seg) == 0
    assert " 0 left initial" in capsys.readouterr().out


def test_pretrained_and_a_weights_file_are_one_too_many(shapes_folder, tmp_path, capsys):
    args = train_args(shapes_folder, tmp_path / "run", 1, "--pretrained", "--pretrained-file", "x.pth")
    assert cli_main(args) == 2
    assert "--pretrained and --pretrained-file both give the initial weights; choose one" in capsys.readouterr().err
