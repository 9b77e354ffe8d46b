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


class _BatchNormForward:
    """torch's _BatchNorm.forward (momentum=None: cumulative average over num_batches_tracked; eval
    without running stats: batch statistics), computed by the fused kernel."""

    _dlk_relu = False

    def _dlk_step(self):
        """torch's bookkeeping before a batch-norm call: (momentum factor, training?, running_mean,
        running_var), counting num_batches_tracked in training."""
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_running = not self.training or self.track_running_stats
        return (factor, bn_training, self.running_mean if use_running else None,
                self.running_var if use_running else None)

    def _dlk_forward(self, input, residual=None):
        self._check_input_dim(input)
        factor, bn_training, rm, rv = self._dlk_step()
        if residual is not None:
            return F.batch_norm_add_relu(input, residual, rm, rv, self.weight, self.bias, bn_training, factor,
                                         self.eps)
        fn = F.batch_norm_relu if self._dlk_relu else F.batch_norm
        return fn(input, rm, rv, self.weight, self.bias, bn_training, factor, self.eps)

    def forward(self, input):
        return self._dlk_forward(input)


class BatchNorm1d(_BatchNormForward, torch.nn.BatchNorm1d):
    """torch.nn.BatchNorm1d computed by dlkernels' fused batch-norm kernel."""


class BatchNorm2d(_BatchNormForward, torch.nn.BatchNorm2d):
    """torch.nn.BatchNorm2d computed by dlkernels' fused batch-norm kernel."""


class BatchNorm3d(_BatchNormForward, torch.nn.BatchNorm3d):
    """torch.nn.BatchNorm3d computed by dlkernels' fused batch-norm kernel."""


class BatchNormReLU2d(_BatchNormForward, torch.nn.BatchNorm2d):
    """BatchNorm2d followed by ReLU, fused: one pass fewer each way. Same parameters, buffers and
    state_dict keys as BatchNorm2d, so a BatchNorm2d's state loads into it."""

    _dlk_relu = True

    def add_relu(self, input, residual):
        """relu(self(input) + residual): the end of a ResNet basic block, fused."""
        return self._dlk_forward(input, residual)

    def forward(self, input, residual=None):
        """relu(bn(input)), or relu(bn(input) + residual) given a residual (what convert's graph fusion
        calls). A residual that is not of the input's shape, dtype and device (a broadcast add, type
        promotion) takes the unfused ops, so the result is torch's in every case."""
        if residual is None:
            return self._dlk_forward(input)
        if (not isinstance(residual, torch.Tensor) or residual.shape != input.shape
                or residual.dtype != input.dtype or residual.device != input.device):
            self._check_input_dim(input)
            factor, bn_training, rm, rv = self._dlk_step()
            out = F.batch_norm(input, rm, rv, self.weight, self.bias, bn_training, factor, self.eps)
            return torch.relu(out + residual)
        return self._dlk_forward(input, residual)


class SyncBatchNorm(_BatchNormForward, torch.nn.modules.batchnorm._BatchNorm):
    """torch.nn.SyncBatchNorm: in training under torch.distributed, statistics over every rank of the
    process group (all-gathered per-channel count, mean and variance, merged in float64); otherwise a
    plain fused batch norm. Same constructor, parameters, buffers and state_dict keys as
    torch.nn.SyncBatchNorm; it derives from their common base rather than from torch.nn.SyncBatchNorm,
    whose DistributedDataParallel check rejects CPU modules, so that it also runs on CPU (gloo)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _check_non_zero_input_channels(self, input):
        if input.size(1) == 0:
            raise ValueError("SyncBatchNorm number of input channels should be non-zero")

    def forward(self, input):
        import torch.distributed as dist

        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        factor, bn_training, rm, rv = self._dlk_step()
        group = self.process_group if self.process_group is not None else (
            dist.group.WORLD if dist.is_available() and dist.is_initialized() else None)
        world = dist.get_world_size(group) if group is not None else 1
        relu = self._dlk_relu  # True on instances convert_sync_batchnorm made from a BatchNormReLU2d
        if not (bn_training and world > 1):
            fn = F.batch_norm_relu if relu else F.batch_norm
            return fn(input, rm, rv, self.weight, self.bias, bn_training, factor, self.eps)
        from .autograd import SyncBatchNormFunction, apply as _autograd_apply
        return _autograd_apply(SyncBatchNormFunction, input, self.weight, self.bias, rm, rv, float(factor), float(self.eps), group,
                                           world, relu)

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """Every BatchNorm*D in module becomes a dlkernels SyncBatchNorm with the same parameters and
        buffers (torch.nn.SyncBatchNorm.convert_sync_batchnorm, producing ours)."""
        out = module
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(module, cls):
            out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                      process_group)
            if module.affine:
                with torch.no_grad():
                    out.weight = module.weight
                    out.bias = module.bias
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.training = module.training
            if isinstance(module, BatchNormReLU2d):
                out._dlk_relu = True  # keep the fused ReLU (its nn.ReLU slot is an Identity now)
            if hasattr(module, "qconfig"):
                out.qconfig = module.qconfig
        for name, child in module.named_children():
            out.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        del module
        return out
