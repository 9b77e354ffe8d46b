"""numpy "from scratch" references, written from the textbook's formulas under PyTorch's conventions.

The textbook's SoftmaxWithLoss: y = softmax(x) (max subtracted first, or exp overflows),
loss = cross_entropy_error(y, t) = -sum(t * log(y)) / N, and backward dx = (y - t) / N.
PyTorch generalises it with class weights w, label smoothing eps and ignore_index; with q the
(smoothed) target distribution of a row, the row loss is sum_c w_c q_c (-log y_c), its gradient is
(sum_c w_c q_c) y - w * q, and 'mean' divides by sum of w_target (index targets) or by N (probabilities).
"""
import numpy as np


def softmax(x):
    x = x - x.max(axis=-1, keepdims=True)  # overflow guard
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def cross_entropy_error(y, t):
    """Textbook cross_entropy_error with a one-hot or probability t, averaged over the batch."""
    delta = 1e-300  # the textbook's guard against log(0), at float64 scale
    return -np.sum(t * np.log(y + delta)) / y.shape[0]


class SoftmaxWithLoss:
    """The textbook layer, for (N, C) logits and one-hot / probability targets."""

    def forward(self, x, t):
        self.t = t
        self.y = softmax(x)
        return cross_entropy_error(self.y, t)

    def backward(self, dout=1.0):
        # scaled by the incoming gradient, as PyTorch's autograd does
        return dout * (self.y - self.t) / self.t.shape[0]


def _to_rows(a):
    """(N, C, d1..dk) -> (N * d1..dk, C), class axis last."""
    if a.ndim == 2:
        return a
    return np.moveaxis(a, 1, -1).reshape(-1, a.shape[1])


def _from_rows(a, shape):
    if len(shape) == 2:
        return a
    moved = (shape[0],) + tuple(shape[2:]) + (shape[1],)
    return np.moveaxis(a.reshape(moved), -1, 1)


def cross_entropy(x, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, grad=1.0):
    """Loss and d(loss)/dx in float64 for (N, C, ...) logits; grad is the incoming gradient (an array
    shaped like the 'none' output, or a number)."""
    x = np.asarray(x, dtype=np.float64)
    C = x.shape[1]
    rows = _to_rows(x)
    w = np.ones(C) if weight is None else np.asarray(weight, dtype=np.float64)
    eps = label_smoothing
    if np.issubdtype(np.asarray(target).dtype, np.floating):
        q = _to_rows(np.asarray(target, dtype=np.float64)) * (1 - eps) + eps / C
        keep = np.ones(rows.shape[0], dtype=bool)
        denom_rows = np.ones(rows.shape[0])
    else:
        t = np.asarray(target).reshape(-1).astype(np.int64)
        keep = t != ignore_index
        q = np.zeros_like(rows)
        q[np.arange(len(t))[keep], t[keep]] = 1.0
        q = q * (1 - eps) + eps / C
        q[~keep] = 0.0
        denom_rows = np.where(keep, w[np.where(keep, t, 0)], 0.0)
    y = softmax(rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        logy = rows - rows.max(axis=1, keepdims=True)
        logy = logy - np.log(np.exp(logy).sum(axis=1, keepdims=True))
        row_loss = np.where(keep, -(w * q * np.where(q != 0, logy, 0.0)).sum(axis=1), 0.0)
    if reduction == "none":
        loss = row_loss.reshape((x.shape[0],) + x.shape[2:])
        g = np.broadcast_to(np.asarray(grad, dtype=np.float64), loss.shape).reshape(-1)
    elif reduction == "sum":
        loss = row_loss.sum()
        g = np.full(rows.shape[0], float(grad))
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            loss = row_loss.sum() / denom_rows.sum()
            g = np.full(rows.shape[0], float(grad) / denom_rows.sum())
    dx = g[:, None] * ((w * q).sum(axis=1, keepdims=True) * y - w * q)
    dx[~keep] = 0.0
    return loss, _from_rows(dx, x.shape)
