"""numpy "from scratch" layers, written from the textbook's formulas under PyTorch's conventions.

They use nothing of dlkernels or torch: the tests check our kernels against them on small cases, and
the benchmark times them as the "numpy from scratch" column.
"""
import numpy as np


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def im2col(x, kh, kw, stride=1, pad=0, dilation=1):
    """The textbook's im2col, generalised to per-axis stride, padding and dilation: (N, C, H, W) ->
    (N * OH * OW, C * kh * kw), one row per receptive field, zeros from the padding."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(pad), _pair(dilation)
    n, c, h, w = x.shape
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    img = np.pad(x, [(0, 0), (0, 0), (ph, ph), (pw, pw)])
    col = np.zeros((n, c, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        y0 = i * dh
        for j in range(kw):
            x0 = j * dw
            col[:, :, i, j] = img[:, :, y0:y0 + sh * (oh - 1) + 1:sh, x0:x0 + sw * (ow - 1) + 1:sw]
    return col.transpose(0, 4, 5, 1, 2, 3).reshape(n * oh * ow, -1), oh, ow


def col2im(col, shape, kh, kw, stride=1, pad=0, dilation=1):
    """The adjoint of im2col: sums every row entry back onto the pixel it was copied from."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(pad), _pair(dilation)
    n, c, h, w = shape
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    col = col.reshape(n, oh, ow, c, kh, kw).transpose(0, 3, 4, 5, 1, 2)
    img = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=col.dtype)
    for i in range(kh):
        y0 = i * dh
        for j in range(kw):
            x0 = j * dw
            img[:, :, y0:y0 + sh * (oh - 1) + 1:sh, x0:x0 + sw * (ow - 1) + 1:sw] += col[:, :, i, j]
    return img[:, :, ph:ph + h, pw:pw + w]


class Convolution:
    """The textbook's Convolution layer (groups = 1): forward = im2col then one matrix product with the
    filters; backward = the products' transposes, col2im for dx, the sum over positions for db."""

    def __init__(self, W, b, stride=1, pad=0, dilation=1):
        self.W, self.b, self.stride, self.pad, self.dilation = W, b, stride, pad, dilation

    def forward(self, x):
        fn, _, kh, kw = self.W.shape
        self.x_shape = x.shape
        self.col, oh, ow = im2col(x, kh, kw, self.stride, self.pad, self.dilation)
        self.col_W = self.W.reshape(fn, -1).T
        out = self.col @ self.col_W
        if self.b is not None:
            out = out + self.b
        return out.reshape(x.shape[0], oh, ow, -1).transpose(0, 3, 1, 2)

    def backward(self, dout):
        fn, c, kh, kw = self.W.shape
        dout = dout.transpose(0, 2, 3, 1).reshape(-1, fn)
        self.db = dout.sum(axis=0)
        self.dW = (self.col.T @ dout).T.reshape(fn, c, kh, kw)
        dcol = dout @ self.col_W.T
        return col2im(dcol, self.x_shape, kh, kw, self.stride, self.pad, self.dilation)


class BatchNormalization:
    """The textbook's BatchNormalization layer under PyTorch's conventions: statistics per channel over
    (N, H, W) (the textbook flattens 4-D input and normalizes per activation), the biased variance to
    normalize, the unbiased one for running_var, running = (1 - momentum) * running + momentum * batch."""

    def __init__(self, gamma, beta, momentum=0.1, eps=1e-5, running_mean=None, running_var=None):
        self.gamma, self.beta, self.momentum, self.eps = gamma, beta, momentum, eps
        self.running_mean, self.running_var = running_mean, running_var

    def _axes(self, x):
        return (0,) + tuple(range(2, x.ndim))

    def _shape(self, x):
        return (1, x.shape[1]) + (1,) * (x.ndim - 2)

    def forward(self, x, train=True):
        axes, shape = self._axes(x), self._shape(x)
        if train:
            mu = x.mean(axis=axes)
            xc = x - mu.reshape(shape)
            var = (xc ** 2).mean(axis=axes)
            m = x.size // x.shape[1]
            if self.running_mean is not None:
                self.running_mean = (1 - self.momentum) * self.running_mean + self.momentum * mu
                self.running_var = (1 - self.momentum) * self.running_var + self.momentum * var * m / (m - 1)
        else:
            mu, var = self.running_mean, self.running_var
            xc = x - mu.reshape(shape)
        self.train = train
        self.xc, self.std = xc, np.sqrt(var + self.eps).reshape(shape)
        self.xn = xc / self.std
        return self.gamma.reshape(shape) * self.xn + self.beta.reshape(shape)

    def backward(self, dout):
        axes, shape = self._axes(dout), self._shape(dout)
        self.dbeta = dout.sum(axis=axes)
        self.dgamma = (self.xn * dout).sum(axis=axes)
        dxn = self.gamma.reshape(shape) * dout
        dxc = dxn / self.std
        if not self.train:
            return dxc
        m = dout.size // dout.shape[1]
        dstd = -((dxn * self.xc) / (self.std * self.std)).sum(axis=axes).reshape(shape)
        dvar = 0.5 * dstd / self.std
        dxc = dxc + (2.0 / m) * self.xc * dvar
        dmu = dxc.sum(axis=axes).reshape(shape)
        return dxc - dmu / m
