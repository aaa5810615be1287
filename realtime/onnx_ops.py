"""ONNX translations of the few torch ops of the model step that the TorchScript-based exporter
lacks (opset :data:`ONNX_OPSET`), registered by :func:`register_onnx_ops` before an export.

* ``cummax`` (the causal unvoiced hold, :func:`comostream.models.acoustic.hold_unvoiced`): a
  masked max over a ``(T, T)`` lower triangle (``T`` is a block's few frames);
* ``unfold`` with a length unknown at export time (the causal convolutions' taps, with the frame
  count dynamic): one ``Gather`` of the windows' indices;
* ``bitwise_xor`` on integers (the counter-based noise hash): ``BitwiseXor``.

The vocoder's FFT filtering has its own export path (real DFT matrices, see
:mod:`comostream.models.vocoder_synth`): ONNX has no complex tensors.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["ONNX_OPSET", "register_onnx_ops"]

ONNX_OPSET = 18  # BitwiseXor/BitwiseAnd (18); ReduceMax takes its axes as an input (18)

_INT64_MIN = torch.iinfo(torch.int64).min


def _const(g: Any, value: Any) -> Any:
    return g.op("Constant", value_t=torch.tensor(value, dtype=torch.int64))


def _xor(g: Any, a: Any, b: Any) -> Any:
    from torch.onnx import symbolic_helper as sh

    return g.op("Xor" if sh._is_bool(a) else "BitwiseXor", a, b)


def _cummax(g: Any, x: Any, dim: int) -> tuple[Any, Any]:
    """``(values, indices)`` of ``cummax(x, dim)``: ``max_{s <= t} x[s]`` as a masked reduce."""
    from torch.onnx import symbolic_helper as sh

    d = dim % sh._get_tensor_rank(x)
    frames = g.op("Gather", g.op("Shape", x), _const(g, d), axis_i=0)
    r = g.op("Range", _const(g, 0), frames, _const(g, 1))  # (T,)
    mask = g.op("LessOrEqual", r, g.op("Unsqueeze", r, _const(g, [1])))  # [t, s]: s <= t
    rows = g.op("Unsqueeze", x, _const(g, [d]))  # (..., 1, T): x[..., s] for every t
    if sh._is_fp(x):
        low = g.op("Constant", value_t=torch.tensor(float("-inf")))
        low = g.op("CastLike", low, x)
    else:
        low = g.op("CastLike", _const(g, _INT64_MIN), x)
    masked = g.op("Where", mask, rows, low)  # (..., T, T)
    values = g.op("ReduceMax", masked, _const(g, [d + 1]), keepdims_i=0)
    indices = g.op("ArgMax", masked, axis_i=d + 1, keepdims_i=0, select_last_index_i=1)
    return values, indices


def _unfold(g: Any, x: Any, dim: int, size: int, step: int) -> Any:
    """``x.unfold(dim, size, step)``: ``x[:dim] + (windows,) + x[dim+1:] + (size,)``."""
    from torch.onnx import symbolic_helper as sh

    rank = sh._get_tensor_rank(x)
    d = dim % rank
    length = g.op("Gather", g.op("Shape", x), _const(g, d), axis_i=0)
    starts = g.op("Range", _const(g, 0), g.op("Sub", length, _const(g, size - 1)), _const(g, step))
    index = g.op("Add", g.op("Unsqueeze", starts, _const(g, [1])), _const(g, list(range(size))))
    out = g.op("Gather", x, index, axis_i=d)  # x[:d] + (windows, size) + x[d+1:]
    if d == rank - 1:
        return out
    perm = [*range(d + 1), *range(d + 2, rank + 1), d + 1]
    return g.op("Transpose", out, perm_i=perm)


def register_onnx_ops() -> None:
    """Register the translations with ``torch.onnx`` (for :data:`ONNX_OPSET`; idempotent)."""
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx import symbolic_helper as sh

    register_custom_op_symbolic("aten::__xor_", _xor, ONNX_OPSET)
    register_custom_op_symbolic("aten::bitwise_xor", _xor, ONNX_OPSET)
    register_custom_op_symbolic("aten::cummax", sh.parse_args("v", "i")(_cummax), ONNX_OPSET)
    register_custom_op_symbolic(
        "aten::unfold", sh.parse_args("v", "i", "i", "i")(_unfold), ONNX_OPSET
    )
