"""8-bit weights for the exported step: its matrix products as ONNX Runtime's ``MatMulNBits``.

:func:`quantize_matmuls` replaces every ``MatMul`` whose second input is a 2-D float32 weight
(``(K, N)``, an initializer) by ``com.microsoft.MatMulNBits`` with ``bits = 8``: the weight is
stored per output column in blocks of :data:`BLOCK` along ``K`` (fewer for a small ``K``), each
block as ``uint8`` codes ``q`` and one float scale ``s`` (symmetric: ``w = (q - 128) * s``,
``s = max|w| / 127``).
``accuracy_level = 4`` lets ONNX Runtime run the product in int8 with each *row* of the
activations quantized on its own, block by block, so one stream's output never depends on the
other streams of a batch (batched == separate, to float rounding). The file is a quarter of the
size; at the step's small batches (1-8 streams, a few frames) the products read a quarter of the
bytes and the step runs 20-30% faster (docs/onnx.md, "8-bit weights"). The op is ONNX
Runtime's own (its CPU provider; other runtimes need the float file). Needs only the ``onnx``
package.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BLOCK", "block_size", "int8_kernels_problem", "quantize_matmuls", "quantize_weight"]

BLOCK = 128  # weights per quantization block along K (a power of 2, >= 16)
ACCURACY_LEVEL = 4  # int8 compute, activations quantized per row and block
MS_DOMAIN = "com.microsoft"


def int8_kernels_problem(machine: str | None = None, cpuinfo: str | None = None) -> str | None:
    """Why ONNX Runtime would have no fast int8 kernel for ``MatMulNBits`` here (None: it has).
    MLAS has them for ARM64 and for x86-64 with AVX2 (or AVX-512); elsewhere it computes the
    product in float from the codes, slower than the float step. ``machine`` and ``cpuinfo``
    (the text of ``/proc/cpuinfo``) default to this machine's; where the CPU's flags cannot be
    read, an x86-64 is taken to have AVX2 (every x86-64 CPU since about 2015)."""
    machine = (machine or platform.machine()).lower()
    if machine in ("arm64", "aarch64"):
        return None
    if machine not in ("x86_64", "amd64"):
        return f"no 8-bit kernels for a {machine} CPU"
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return None
    flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), None)
    if flags is None or "avx2" in flags.split():
        return None
    return "this x86-64 CPU has no AVX2 (no 8-bit kernels)"


def block_size(k: int, block: int = BLOCK) -> int:
    """The block for a weight of ``k`` rows: ``block``, or the smallest power of 2 from 16 that
    holds all ``k`` (less zero padding for a small ``K``)."""
    return min(block, max(16, 1 << (max(1, k) - 1).bit_length()))


def quantize_weight(w: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """``w (K, N)`` float -> codes ``(N, ceil(K / block), block)`` uint8 (K zero-padded) and
    scales ``(N * ceil(K / block),)`` float32, as ``MatMulNBits`` (bits 8, no zero points:
    128) reads them."""
    k, n = w.shape
    blocks = -(-k // block)
    padded = np.zeros((blocks * block, n), np.float32)
    padded[:k] = w
    cols = padded.T.reshape(n, blocks, block)
    peak = np.abs(cols).max(axis=-1, keepdims=True)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    codes = np.clip(np.rint(cols / scale), -127, 127).astype(np.int16) + 128
    return codes.astype(np.uint8), scale.reshape(-1)


def quantize_matmuls(model: Any, block: int = BLOCK) -> int:
    """Replace, in place, each ``MatMul`` of ``model`` (an ``onnx.ModelProto``) whose weight is
    a 2-D float32 initializer by an 8-bit ``MatMulNBits``; returns how many. Weights no other
    node reads are dropped."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    nodes, added, replaced, count = [], {}, {}, 0
    for node in graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is None or len(weight.dims) != 2 or weight.data_type != TensorProto.FLOAT:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weight)
        size = block_size(w.shape[0], block)
        codes, scales = quantize_weight(w, size)
        q_name, s_name = f"{weight.name}.int8", f"{weight.name}.int8_scale"
        added[q_name] = numpy_helper.from_array(codes, q_name)
        added[s_name] = numpy_helper.from_array(scales, s_name)
        replaced[weight.name] = replaced.get(weight.name, 0) + 1
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                [node.input[0], q_name, s_name],
                list(node.output),
                name=f"{node.name}.int8" if node.name else f"matmul_int8_{count}",
                domain=MS_DOMAIN,
                K=int(w.shape[0]),
                N=int(w.shape[1]),
                bits=8,
                block_size=size,
                accuracy_level=ACCURACY_LEVEL,
            )
        )
        count += 1
    dropped = {name for name, n in replaced.items() if n == readers[name]}  # no reader left
    kept = [t for t in graph.initializer if t.name not in dropped]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + list(added.values()))
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return count
