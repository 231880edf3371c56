"""Pretrained-config metadata shared by the BOAT model families."""

BOAT_PAPER_CFG = dict(
    license="mit",
    paper_ids="arXiv:2201.13027",
    paper_name="BOAT: Bilateral Local Attention Vision Transformer",
    origin_url="https://github.com/mahaoyuHKU/pytorch-boat",
    notes=(
        "Released ImageNet-1k weights are hosted externally (see origin_url); load a local copy with "
        "pretrained=True, pretrained_cfg_overlay=dict(file=PATH).",
    ),
)
