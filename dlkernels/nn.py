"""Modules mirroring torch.nn. Each subclasses the torch module it replaces, so constructor,
buffers, state_dict keys, repr and isinstance checks are torch's own; only forward changes."""
import torch

from . import functional as F


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """torch.nn.CrossEntropyLoss computed by the fused softmax-cross-entropy kernel."""

    def forward(self, input, target):
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)
