"""BOAT model families, registered with timm on import."""
from . import boat_cswin, boat_swin  # noqa: F401
