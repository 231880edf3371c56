"""A timm classifier as a task's feature backbone (``features_only``): how the feature model names the
classifier's weights, the filter that loads a classifier's weights file into it, and which of its parameters
the classifier exempts from weight decay.

timm's feature wrapper (``flatten_sequential``) names the children of a top-level ``nn.Sequential``
``<name>_<child>`` (``layers_0``) where the classifier has ``<name>.<child>`` (``layers.0``).
"""
from typing import Any

import timm
import torch
import torch.nn as nn

from ..weights import StateDict
from . import weights_filter

__all__ = ["FeatureNames"]


class FeatureNames:
    """The classifier behind a ``features_only`` model of ``model_name`` built with ``timm_kwargs``.

    Attributes:
        renames: Key prefixes of the feature model -> those of the classifier (``{"layers_0.": "layers.0."}``).
    """

    def __init__(self, model_name: str, timm_kwargs: dict[str, Any]):
        self.model_name = model_name
        self.timm_kwargs = dict(timm_kwargs)
        reference = self.reference()
        self.renames = {f"{name}_{child}.": f"{name}.{child}." for name, module in reference.named_children()
                        if isinstance(module, nn.Sequential) for child, _ in module.named_children()}
        self._exempt = set(reference.no_weight_decay()) if hasattr(reference, "no_weight_decay") else set()

    def reference(self) -> nn.Module:
        """The classifier, on the meta device: the naming and conversion of its weights files."""
        with torch.device("meta"):
            return timm.create_model(self.model_name, **self.timm_kwargs)

    def classifier_key(self, key: str) -> str:
        """The classifier's name of a feature model's state-dict key (``layers_0.x`` -> ``layers.0.x``)."""
        stored = next((prefix for prefix in self.renames if key.startswith(prefix)), None)
        return self.renames[stored] + key[len(stored):] if stored else key

    def no_weight_decay(self, features: nn.Module) -> set[str]:
        """The parameters of ``features`` (the feature model) that the classifier exempts from weight decay."""
        return {name for name, _ in features.named_parameters() if self.classifier_key(name) in self._exempt}

    def weights_filter(self, state_dict: StateDict, features: nn.Module) -> StateDict:
        """A weights file's state dict in the feature model's layout (the ``filter_fn`` of
        :func:`~boat_vit.weights.load_weights` for ``features``): the classifier family's filter converts it as
        for the classifier, then keys take the feature model's names. The classifier's head and final norm
        keep their names and stay unused."""
        reference = self.reference()
        filter_fn = weights_filter(reference)
        if filter_fn is not None:
            state_dict = filter_fn(state_dict, reference)
        to_features = {theirs: ours for ours, theirs in self.renames.items()}
        renamed = {}
        for key, tensor in state_dict.items():
            prefix = next((p for p in to_features if key.startswith(p)), None)
            renamed[to_features[prefix] + key[len(prefix):] if prefix else key] = tensor
        return renamed
