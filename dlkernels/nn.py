"""Modules mirroring torch.nn. Each subclasses the torch module it replaces, so constructor,
buffers, state_dict keys, repr and isinstance checks are torch's own; only forward changes."""
import torch

from . import functional as F


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """torch.nn.CrossEntropyLoss computed by the fused softmax-cross-entropy kernel."""

    def forward(self, input, target):
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)


class MaxPool2d(torch.nn.MaxPool2d):
    """torch.nn.MaxPool2d computed by dlkernels' max pooling kernel."""

    def forward(self, input):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool2d(torch.nn.AvgPool2d):
    """torch.nn.AvgPool2d computed by dlkernels' average pooling kernel."""

    def forward(self, input):
        return F.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool2d(torch.nn.AdaptiveAvgPool2d):
    """torch.nn.AdaptiveAvgPool2d computed by dlkernels' adaptive average pooling kernel."""

    def forward(self, input):
        return F.adaptive_avg_pool2d(input, self.output_size)


class Conv2d(torch.nn.Conv2d):
    """torch.nn.Conv2d computed by im2col + GEMM. Non-'zeros' padding_mode pads first, as torch does."""

    def forward(self, input):
        if self.padding_mode != "zeros":
            padded = torch.nn.functional.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(padded, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
