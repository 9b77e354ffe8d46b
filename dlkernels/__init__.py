"""dlkernels: hand-written CPU (AVX2/AVX-512) and CUDA kernels for textbook deep-learning layers.

The ops are registered with PyTorch's dispatcher as ``torch.ops.dlkernels.*``; use them through
``dlkernels.functional`` and ``dlkernels.nn``, which mirror ``torch.nn.functional`` and ``torch.nn``.
"""
import contextlib
import os

import torch

from . import _C  # noqa: F401  (loads the kernels and registers torch.ops.dlkernels)
from . import _ops  # noqa: F401  (fake kernels for torch.compile / meta tensors)
from . import _vmap

_vmap.register()  # batching rules: torch.func.vmap over every op
from . import functional, nn, optim  # noqa: F401
from .convert import convert  # noqa: F401

__version__ = "0.2.0.dev0"

_env_error = _C.isa_env_error()
if _env_error:
    raise RuntimeError("dlkernels: " + _env_error)
_sync_env = os.environ.get("DLKERNELS_CUDA_SYNC_CHECKS", "")
if _sync_env not in ("", "0", "1"):
    raise RuntimeError(f"dlkernels: DLKERNELS_CUDA_SYNC_CHECKS must be 0 or 1, got {_sync_env!r}")
_C.set_cuda_sync_checks(_sync_env == "1")


def cpu_isa():
    """The CPU instruction-set path the kernels use now: 'scalar', 'avx2' or 'avx512'."""
    return _C.cpu_isa()


def supported_cpu_isas():
    """Every CPU path compiled in that this machine can run, best last."""
    return list(_C.supported_cpu_isas())


def set_cpu_isa(name):
    """Switch every CPU kernel to the 'scalar', 'avx2' or 'avx512' path (process-wide).

    Raises ValueError for an unknown name or a path this CPU cannot run."""
    _C.set_cpu_isa(name)


@contextlib.contextmanager
def use_cpu_isa(name):
    """Run a block on one CPU path, then restore the previous one. Process-wide, not per thread."""
    previous = cpu_isa()
    set_cpu_isa(name)
    try:
        yield
    finally:
        set_cpu_isa(previous)


def cuda_available():
    """Whether this build has the CUDA kernels and torch sees a GPU."""
    return bool(_C.with_cuda) and torch.cuda.is_available()


def empty_cache():
    """Return the idle blocks of the CPU output cache to the OS (cf. torch.cuda.empty_cache)."""
    _C.empty_cache()


def set_cpu_cache_limit(nbytes):
    """Cap the idle bytes the CPU output cache may hold (default 1 GiB, or DLKERNELS_CPU_CACHE_BYTES)."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"dlkernels.set_cpu_cache_limit: nbytes must be an int >= 0, got {nbytes!r}")
    _C.set_cpu_cache_limit(nbytes)


def set_cpu_cache_window(allocations):
    """An idle block of the CPU output cache not reused within this many cached allocations goes back to
    the OS (default 1024, or DLKERNELS_CPU_CACHE_WINDOW). Raise it for a training step that makes more
    large allocations than that; 0 returns every block as soon as it is freed."""
    if isinstance(allocations, bool) or not isinstance(allocations, int) or allocations < 0:
        raise ValueError(f"dlkernels.set_cpu_cache_window: allocations must be an int >= 0, got {allocations!r}")
    _C.set_cpu_cache_window(allocations)


def cpu_cache_stats():
    """The CPU output cache's counters (cf. torch.cuda.memory_stats): held_bytes (mapped blocks, in use
    and idle), in_use_bytes, idle_bytes, limit_bytes (the cap on idle bytes), window (see
    set_cpu_cache_window), hits and misses (allocations served by an idle block or by a new one) and
    released (blocks returned to the OS)."""
    return dict(_C.cpu_cache_stats())


def workspace_limit():
    """Bytes the im2col column buffer of one convolution call may take (default 256 MiB)."""
    return _C.workspace_limit()


def set_workspace_limit(nbytes):
    """Bound the im2col column buffer: convolutions process the batch in chunks whose column matrix fits
    (one image's column matrix is the smallest chunk)."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
        raise ValueError(f"dlkernels.set_workspace_limit: nbytes must be a positive int, got {nbytes!r}")
    _C.set_workspace_limit(nbytes)


_WINOGRAD_MODES = ("never", "auto", "always")


def winograd():
    """Which CPU float32/float64 convolutions run by Winograd F(2x2, 3x3): "auto" (default: the forward and
    input gradient of one-group 3x3 stride-1 layers of at least 8 input and 8 output channels, their
    weight gradient likewise for channels_last input and from 32 and 32 channels for NCHW input),
    "always" (every such layer, any channel count) or "never"."""
    return _WINOGRAD_MODES[_C.winograd_mode()]


def set_winograd(mode):
    """Choose which CPU convolutions run by Winograd F(2x2, 3x3) (see winograd()): their forward, input
    gradient and weight gradient take 2.25x fewer multiplies; results differ from the direct sum by
    rounding only (float32 error against float64 within 2x torch's). Applies to layers of 3x3 filters,
    stride 1, dilation 1, one group and padding of at most 2 on each side; a call whose input or weight
    holds a value that is not finite, or within 64x of the largest float, takes the other paths.
    Returns the previous mode."""
    if mode not in _WINOGRAD_MODES:
        raise ValueError(f"dlkernels.set_winograd: mode must be one of {_WINOGRAD_MODES}, got {mode!r}")
    before = winograd()
    _C.set_winograd_mode(_WINOGRAD_MODES.index(mode))
    return before


_DIRECT_MODES = ("never", "auto", "always")


def direct_conv():
    """Which CPU float32/float64 convolutions run by the direct kernels (lanes over output channels, no
    column matrix; every CPU path: AVX-512, AVX2, scalar): "auto" (default: the forward of strided layers,
    of stride-1 layers on outputs of at most 16 positions and of channels_last layers of at most 16
    channels, the input gradient of those stride-1 layers, the weight gradient of layers of at most 32
    channels; measured on an AVX2 host, see docs/performance.md), "always" (every pass of every one-group
    layer; the input gradient needs dilation 1) or "never"."""
    return _DIRECT_MODES[_C.direct_mode()]


def set_direct_conv(mode):
    """Choose which CPU float32/float64 convolutions run by the direct kernels (see direct_conv()); results differ
    from the other paths by rounding only. Takes precedence over Winograd where both apply. Returns the
    previous mode."""
    if mode not in _DIRECT_MODES:
        raise ValueError(f"dlkernels.set_direct_conv: mode must be one of {_DIRECT_MODES}, got {mode!r}")
    before = direct_conv()
    _C.set_direct_mode(_DIRECT_MODES.index(mode))
    return before


def cuda_sync_checks():
    """Whether CUDA ops may synchronise with the GPU to raise a clear error on bad device values."""
    return _C.cuda_sync_checks()


def set_cuda_sync_checks(enabled):
    """On CUDA, a cross-entropy class index outside [0, C) is only known on the GPU. With checks on
    (DLKERNELS_CUDA_SYNC_CHECKS=1), each call reads it back (a host synchronisation) and raises an
    IndexError naming the index. Off (the default), nothing synchronises, and the offending row's loss
    is NaN (so is the mean or sum over it). torch instead stops the CUDA context with a device-side
    assert; the CPU path always raises the IndexError (it costs nothing there)."""
    if not isinstance(enabled, bool):
        raise TypeError(f"dlkernels.set_cuda_sync_checks: enabled must be a bool, got {enabled!r}")
    _C.set_cuda_sync_checks(enabled)


@contextlib.contextmanager
def cuda_sync_checks_enabled(enabled=True):
    """Run a block with CUDA sync checks on (or off), then restore the previous setting."""
    previous = cuda_sync_checks()
    set_cuda_sync_checks(enabled)
    try:
        yield
    finally:
        set_cuda_sync_checks(previous)
