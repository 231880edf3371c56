"""Pretrained-config metadata shared by the BOAT model families, and where their released weights live."""
from typing import Any, Dict

BOAT_PAPER_CFG = dict(
    license="mit",
    paper_ids="arXiv:2201.13027",
    paper_name="BOAT: Bilateral Local Attention Vision Transformer",
    origin_url="https://github.com/mahaoyuHKU/pytorch-boat",
    notes=(
        "ImageNet-1k weights of the released code (origin_url), downloaded from its Dropbox links on "
        "pretrained=True; a local copy loads with pretrained=True, pretrained_cfg_overlay=dict(file=PATH).",
    ),
)
BOAT_CITATION = """@article{yu2022boat,
  author  = {Tan Yu and Gangming Zhao and Ping Li and Yizhou Yu},
  title   = {{BOAT}: Bilateral Local Attention Vision Transformer},
  journal = {CoRR},
  volume  = {abs/2201.13027},
  year    = {2022},
  url     = {https://arxiv.org/abs/2201.13027},
}"""

# The links of the released code's README (github.com/mahaoyuHKU/pytorch-boat, commit b94a66c) are Dropbox
# share pages (``https://www.dropbox.com/s/<id>/<file>?dl=0``); ``dl=1`` asks Dropbox for the file itself.
DROPBOX_SHARES = "https://www.dropbox.com/s"
DIRECT_DOWNLOAD = "dl=1"
RELEASED_FILES: Dict[str, tuple[str, str]] = {  # model -> (Dropbox share id, file name)
    "boat_swin_tiny_patch4_window7_224": ("xa94uewsrvjglnn", "tiny.pth"),
    "boat_swin_small_patch4_window7_224": ("7ih1zvii3bvdcgd", "small.pth"),
    "boat_swin_base_patch4_window7_224": ("70hr7h0smcr0gr9", "base.pth"),
    "boat_cswin_tiny_224": ("rsmtu6r0v2lt0y5", "cswin_tiny.pth.tar"),
    "boat_cswin_small_224": ("cnl00d1faxxoi19", "cswin_small.pth.tar"),
    "boat_cswin_base_224": ("92sr8r8zhng1mqg", "cswin_base.pth.tar"),
}
RELEASED_SUFFIXES = (".pth.tar", ".pth")


def released_weights(model: str) -> Dict[str, Any]:
    """The pretrained-config entries that load ``model``'s released checkpoint on ``pretrained=True``.

    ``url`` is timm's ``(url, file name)`` form: the direct-download link, and the name of the file in timm's
    cache (``$TORCH_HOME/hub/checkpoints``), which names the model (the released names, ``tiny.pth`` and
    ``base.pth``, are too common to share a cache with other libraries). ``custom_load`` hands the cached file
    to the model's ``load_pretrained``, which reads it safely.
    """
    share, name = RELEASED_FILES[model]
    suffix = next(s for s in RELEASED_SUFFIXES if name.endswith(s))
    return dict(url=(f"{DROPBOX_SHARES}/{share}/{name}?{DIRECT_DOWNLOAD}", f"{model}.released{suffix}"),
                custom_load=True)
