"""boat-vit: BOAT (Bilateral Local Attention) vision transformers for PyTorch and timm.

Importing the package registers the BOAT models with timm (``timm.create_model("boat_swin_tiny_...")``).
"""
from ._startup import choose_openmp_waiting, quiet_interrupt

choose_openmp_waiting()

with quiet_interrupt():  # Ctrl-C while the command imports torch and timm: one line, not a traceback
    from .clustering import Clustering, GroupPlan, balanced_clustering, plan_groups
    from .layers import FeatureSpaceLocalAttention
    from . import models  # noqa: F401  (registers the BOAT models with timm)

__version__ = "0.1.0"

__all__ = [
    "Clustering",
    "FeatureSpaceLocalAttention",
    "GroupPlan",
    "balanced_clustering",
    "plan_groups",
    "__version__",
]
