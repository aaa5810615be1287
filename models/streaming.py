"""Streaming-native building blocks: one causal computation, two schedules.

Every layer is internally CAUSAL. A layer with lookahead ``L`` is a causal layer whose output is
*interpreted* as delayed by ``L`` frames; paths around it get a matching :class:`Delay`, and
conditions fed deeper are delayed by the cumulative delay there. A whole stack is then a causal
system with total delay ``D`` (the sum of the lookaheads along it), and

* one-shot:  ``forward(x) = causal(x right-padded with D zero frames)[..., D:]`` (aligned);
* streaming: ``y, state = step(x_chunk, state)`` runs the same causal ops chunk by chunk, the past
  held in preallocated history buffers (``(k - 1) * dilation`` frames per conv, ``L`` per delay);
  ``flush(state)`` feeds the ``D`` zero frames. Concatenating every ``step`` output and the
  ``flush`` output, then dropping the first ``D`` frames, equals the one-shot output.

Stateful primitives implement ``run(x, state)`` where ``state`` is their own state dict, or
``None`` for a fresh run over a whole sequence (zero past, no buffers touched). Composite modules
write their computation once, in terms of ``run`` calls on children with :func:`child` states, so
both schedules execute literally the same code.

A state is a nested ``dict`` of tensors (``StreamState``) whose tensors are allocated once by
``init_state`` and then only updated in place (``copy_``), so shapes and storage never change:
``step`` can be captured in a CUDA graph. ``step`` is meant to run under ``torch.inference_mode()``
or ``no_grad``; histories are stored detached.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Streaming",
    "StreamingStack",
    "StreamState",
    "CausalConv1d",
    "Delay",
    "FrameLinear",
    "RunningCentre",
    "centre_prefix_stats",
    "store",
    "child",
    "init_tree",
    "per_item",
    "zero_history",
    "state_tensors",
    "rebuild_state",
    "pad_future",
]

StreamState = dict[str, Any]  # nested dicts whose leaves are preallocated tensors


@runtime_checkable
class Streaming(Protocol):
    """What every streaming-native module declares (its ``step``/``flush`` take its own inputs).

    ``lookahead_frames``: future frames it needs (its delay); ``left_frames``: past frames its
    output reaches. A chain's algorithmic delay is the sum of its modules' ``lookahead_frames``.
    """

    lookahead_frames: int
    left_frames: int

    def init_state(
        self,
        batch: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> StreamState: ...


def child(state: StreamState | None, name: str) -> StreamState | None:
    """The sub-state of child ``name`` (``None`` stays ``None``: a fresh one-shot run).

    A stateless child (zero history) has no entry; it gets ``{}``.
    """
    return None if state is None else state.get(name, {})


def init_tree(
    module: nn.Module,
    batch: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> StreamState:
    """Fresh state of ``module``: its own if it is a primitive, else its children's, by name.

    ``device``/``dtype`` default to those of the module's first parameter.
    """
    ref = next(module.parameters(), None)
    if ref is not None:
        device = ref.device if device is None else device
        dtype = ref.dtype if dtype is None else dtype
    if isinstance(module, (CausalConv1d, Delay, RunningCentre)):
        return module.init_state(batch, device, dtype)
    out: StreamState = {}
    for name, sub in module.named_children():
        sub_state = init_tree(sub, batch, device, dtype)
        if sub_state:
            out[name] = sub_state
    return out


def per_item(value: Tensor | float, x: Tensor, name: str) -> Tensor:
    """``value`` (scalar, ``(B,)`` or per frame ``(B, 1, T)``) as ``(B, 1, 1)`` or ``(B, 1, T)``
    on ``x``'s device and dtype; ``name`` is used in the error."""
    v = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if v.dim() == 3:
        return v
    if v.dim() == 0:
        v = v.expand(x.shape[0])
    if v.dim() != 1:
        raise ValueError(f"{name} must be a scalar, (B,) or (B, 1, T); got {tuple(v.shape)}")
    return v.view(-1, 1, 1)


def zero_history(
    batch: int,
    channels: int,
    frames: int,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> StreamState:
    """``{"history": zeros (B, channels, frames)}`` (the zero past), ``{}`` when ``frames == 0``."""
    if frames == 0:
        return {}
    dtype = torch.get_default_dtype() if dtype is None else dtype
    return {"history": torch.zeros(batch, channels, frames, device=device, dtype=dtype)}


class StreamingStack(nn.Module):
    """Base of composite streaming modules: their state is their children's, by name."""

    def init_state(
        self,
        batch: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> StreamState:
        """Fresh streaming state (preallocated histories; the parameters' device/dtype default)."""
        return init_tree(self, batch, device, dtype)


def state_tensors(state: StreamState, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    """Every tensor of a (nested) state as ``(dotted.name, tensor)``, in a stable order."""
    for key in sorted(state):
        value = state[key]
        name = f"{prefix}{key}"
        if isinstance(value, Tensor):
            yield name, value
        else:
            yield from state_tensors(value, name + ".")


def rebuild_state(template: StreamState, leaves: list[Tensor]) -> StreamState:
    """``template``'s nesting with its tensors replaced by ``leaves``, given in
    :func:`state_tensors` order (the inverse of flattening a state)."""
    it = iter(leaves)

    def walk(s: StreamState) -> StreamState:
        return {k: next(it) if isinstance(s[k], Tensor) else walk(s[k]) for k in sorted(s)}

    return walk(template)


def store(state: StreamState, key: str, value: Tensor) -> None:
    """``state[key]`` becomes ``value``: copied into the state's tensor (engines and the batch
    scheduler keep views of it), or, under ONNX export, the new tensor itself (the exporter
    turns each copy into a graph input into an ``Expand`` node; a step's nodes cost time each)."""
    if torch.onnx.is_in_onnx_export():
        state[key] = value
    else:
        state[key].copy_(value.detach())


def pad_future(x: Tensor, frames: int) -> Tensor:
    """``x (..., T)`` with ``frames`` zero frames appended (the one-shot stand-in for flush)."""
    return F.pad(x, (0, frames)) if frames else x


def _run_history(x: Tensor, state: StreamState | None, frames: int) -> Tensor:
    """``x (B, C, k)`` with ``frames`` past frames prepended: zeros, or the stored history.

    With a state, the history buffer is updated in place to the last ``frames`` frames.
    """
    if frames == 0:
        return x
    if state is None:
        return F.pad(x, (frames, 0))
    hist: Tensor = state["history"]
    xp = torch.cat([hist, x], dim=-1)
    store(state, "history", xp[..., xp.shape[-1] - frames :])
    return xp


class CausalConv1d(nn.Module):
    """Causal dilated conv ``(B, C_in, T) -> (B, C_out, T)`` with a declared lookahead.

    Causally, output frame ``t`` sees inputs ``t - (k-1)*dilation .. t``. With lookahead ``L``
    that output is read as frame ``t - L``, so one-shot frame ``t`` sees
    ``t - left_frames .. t + lookahead_frames`` with ``left_frames = (k-1)*dilation - L``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        dilation: int = 1,
        lookahead_frames: int = 0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        span = (kernel_size - 1) * dilation
        if kernel_size < 1 or dilation < 1:
            raise ValueError("kernel_size and dilation must be >= 1")
        if not 0 <= lookahead_frames <= span:
            raise ValueError(f"lookahead_frames must be in [0, {span}], got {lookahead_frames}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.history_frames = span  # frames of past input kept in the streaming state
        self.lookahead_frames = lookahead_frames
        self.left_frames = span - lookahead_frames
        # parameters in nn.Conv1d layout (C_out, C_in, k) and init; the computation is in run()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias)

    def init_state(
        self,
        batch: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> StreamState:
        """``{"history": zeros (B, C_in, (k-1)*dilation)}`` (the zero past), ``{}`` if k = 1."""
        device = self.conv.weight.device if device is None else device
        dtype = self.conv.weight.dtype if dtype is None else dtype
        return zero_history(batch, self.in_channels, self.history_frames, device, dtype)

    def run(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        """Causal output ``(B, C_out, k)`` of ``x (B, C_in, k)`` (delayed by the lookahead).

        Computed as one matmul over the gathered taps, channels-last (see :class:`FrameLinear`):
        on CPU this is many times faster than ``conv1d`` for a few frames with dilation.
        """
        frames = x.shape[-1]
        if frames == 0:
            return x.new_zeros(x.shape[0], self.out_channels, 0)
        if torch.onnx.is_in_onnx_export():  # no unfold in ONNX: the taps by one gather
            xt = self._history_last(x, state)  # (B, span + k, C_in)
            # tap j of frame t is xt[:, t + j d]: one gather (the index folds to a constant
            # once the runtime knows the block's frames), not K slices and a concatenation
            t = torch.arange(frames, device=x.device).unsqueeze(1)
            index = t + self.dilation * torch.arange(self.kernel_size, device=x.device)
            taps = xt[:, index].reshape(x.shape[0], frames, -1)  # (B, k, K C_in)
            weight = self.conv.weight.permute(0, 2, 1).reshape(self.out_channels, -1)
            return F.linear(taps, weight, self.conv.bias).transpose(1, 2)  # taps (B, k, K C_in)
        xp = _run_history(x, state, self.history_frames)  # (B, C_in, span + k)
        taps = xp.unfold(2, self.history_frames + 1, 1)[..., :: self.dilation]  # (B, C, k, K)
        taps = taps.permute(0, 2, 1, 3).reshape(x.shape[0], frames, -1)  # (B, k, C_in * K)
        weight = self.conv.weight.view(self.out_channels, -1)
        return F.linear(taps, weight, self.conv.bias).transpose(1, 2)

    def _history_last(self, x: Tensor, state: StreamState | None) -> Tensor:
        """Under ONNX export: ``x (B, C_in, k)`` with its past frames, channels-last ``(B, span +
        k, C_in)``, the history updated (:func:`store`). Concatenated along time in that layout,
        so the transposes cancel against the layout the export keeps this state in (see
        :func:`comostream.realtime.onnx_step.export_step`) and against channels-last inputs."""
        xt = x.transpose(1, 2)
        span = self.history_frames
        if span == 0:
            return xt
        if state is None:
            return F.pad(xt, (0, 0, span, 0))
        xpt = torch.cat([state["history"].transpose(1, 2), xt], dim=1)
        store(state, "history", xpt[:, xpt.shape[1] - span :].transpose(1, 2))
        return xpt

    def step(self, x: Tensor, state: StreamState) -> tuple[Tensor, StreamState]:
        """One streaming chunk: ``x (B, C_in, k) -> y (B, C_out, k)``, ``lookahead`` frames late."""
        return self.run(x, state), state

    def flush(self, state: StreamState, batch: int) -> Tensor:
        """The last ``lookahead_frames`` output frames ``(B, C_out, L)`` (feeds zero frames)."""
        w = self.conv.weight
        return self.run(w.new_zeros(batch, self.in_channels, self.lookahead_frames), state)

    def forward(self, x: Tensor) -> Tensor:
        """One-shot, aligned: ``(B, C_in, T) -> (B, C_out, T)``."""
        lookahead = self.lookahead_frames
        return self.run(pad_future(x, lookahead))[..., lookahead:]


class FrameLinear(nn.Linear):
    """Frame-wise linear map (a 1x1 conv): ``(B, C_in, T) -> (B, C_out, T)``, stateless.

    Computed channels-last, ``linear(x^T)^T``: BLAS is fast for few rows, slow for few columns,
    so for streaming chunks of a few frames this beats ``conv1d`` several times over. The result
    is a transposed view (channels-last memory); chains of these stay copy-free.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.transpose(1, 2), self.weight, self.bias).transpose(1, 2)


class Delay(nn.Module):
    """Causal delay by ``frames``: ``y[t] = x[t - frames]`` (zeros before the start).

    Placed on paths around a lookahead layer so every branch carries the same delay.
    """

    def __init__(self, channels: int, frames: int) -> None:
        super().__init__()
        if frames < 0:
            raise ValueError("frames must be >= 0")
        self.channels = channels
        self.frames = frames

    def init_state(
        self,
        batch: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> StreamState:
        """``{"history": zeros (B, C, frames)}``, or ``{}`` for a zero delay."""
        return zero_history(batch, self.channels, self.frames, device, dtype)

    def run(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        """``x (B, C, k)`` delayed by ``frames``: ``(B, C, k)``."""
        if self.frames == 0:
            return x
        return _run_history(x, state, self.frames)[..., : x.shape[-1]]

    def step(self, x: Tensor, state: StreamState) -> tuple[Tensor, StreamState]:
        """One streaming chunk ``(B, C, k) -> (B, C, k)``, ``frames`` late."""
        return self.run(x, state), state

    def forward(self, x: Tensor) -> Tensor:
        """Causal (one-shot) delay of a whole sequence ``(B, C, T) -> (B, C, T)``."""
        return self.run(x)


class RunningCentre(nn.Module):
    """Causal centring of a frame sequence on its own running mean (speaker normalisation).

    ``y_t = x_t - m_t``, ``m_t = (num_t + w_t p) / (den_t + w_t)``: an exponentially weighted
    mean (``lam = exp(-1 / tau_frames)``) of the *active* frames (``a_t = [mean_c x_t >
    active_level]``, not silence), ``num_t = lam num_(t-1) + a_t x_t``, ``den_t = lam den_(t-1) +
    a_t``, started from the prior mean ``p`` (buffer ``prior`` (C,), set from the training data)
    counted as ``prior_frames`` frames heard at the start, which decay like every other frame:
    ``w_t = prior_frames lam^(t+1) + eps``. A stream starts at the prior and converges to its own
    long-term average (for log-mel input: the average spectral envelope of whoever sings). No
    lookahead. State: ``num (B, C)``, ``den (B, 1)`` and ``age (B, 1) = 1 - lam^t`` (all zero:
    nothing heard). Pieces of up to :attr:`CHUNK` frames are computed in closed form (a matmul
    with the decay matrix), so every chunking gives the same output up to rounding.
    """

    CHUNK = 64  # frames per closed-form piece
    EPS = 1e-3  # frames of prior that never decay (a stream silent for minutes returns to it)

    def __init__(
        self, channels: int, tau_frames: float, prior_frames: float, active_level: float
    ) -> None:
        super().__init__()
        if tau_frames <= 0 or prior_frames <= 0:
            raise ValueError("tau_frames and prior_frames must be positive")
        self.channels = channels
        self.tau_frames = float(tau_frames)
        self.decay = math.exp(-1.0 / tau_frames)
        self.prior_frames = float(prior_frames)
        self.active_level = float(active_level)
        self.lookahead_frames = 0
        self.left_frames = 0
        self.register_buffer("prior", torch.zeros(channels))

    def init_state(
        self,
        batch: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> StreamState:
        """``{"num": (B, C), "den": (B, 1), "age": (B, 1)}``, all zero: nothing heard yet."""
        device = self.prior.device if device is None else device
        dtype = self.prior.dtype if dtype is None else dtype
        return {
            "num": torch.zeros(batch, self.channels, device=device, dtype=dtype),
            "den": torch.zeros(batch, 1, device=device, dtype=dtype),
            "age": torch.zeros(batch, 1, device=device, dtype=dtype),
        }

    def activity(self, x: Tensor) -> Tensor:
        """``(B, 1, k)``: 1 where the frame's mean over channels is above ``active_level``."""
        return (x.mean(1, keepdim=True) > self.active_level).to(x.dtype)

    def run(
        self, x: Tensor, state: StreamState | None = None, active: Tensor | None = None
    ) -> Tensor:
        """``x (B, C, k) -> x - m (B, C, k)``; a state is updated in place (``None``: nothing
        heard before ``x``). ``active (B, 1, k)``: which frames to average (default
        :meth:`activity` of ``x``)."""
        b, c, k = x.shape
        if k == 0:
            return x
        if state is None:
            num, den, age = x.new_zeros(b, c), x.new_zeros(b, 1), x.new_zeros(b, 1)
        else:
            num, den, age = state["num"], state["den"], state["age"]
        prior = self.prior.to(x.dtype)[None, :, None]
        outs = []
        for i in range(0, k, self.CHUNK):
            xc = x[..., i : i + self.CHUNK]
            n = xc.shape[-1]
            t = torch.arange(n, device=x.device, dtype=x.dtype)
            lag = t[:, None] - t[None, :]  # (t, s)
            w = torch.where(lag >= 0, self.decay ** lag.clamp(min=0), torch.zeros_like(lag))
            carry = self.decay ** (t + 1)  # (n,)
            a = self.activity(xc) if active is None else active[..., i : i + self.CHUNK]
            num_t = torch.matmul(a * xc, w.T) + carry * num[..., None]  # (B, C, n)
            den_t = torch.matmul(a, w.T) + carry * den[..., None]  # (B, 1, n)
            age_t = 1.0 - carry * (1.0 - age[..., None])  # (B, 1, n)
            weight = self.prior_frames * (1.0 - age_t) + self.EPS
            outs.append(xc - (num_t + weight * prior) / (den_t + weight))
            num, den, age = num_t[..., -1], den_t[..., -1], age_t[..., -1]
        if state is not None:
            store(state, "num", num)
            store(state, "den", den)
            store(state, "age", age)
        return torch.cat(outs, -1) if len(outs) > 1 else outs[0]

    def forward(self, x: Tensor) -> Tensor:
        """One-shot ``(B, C, T) -> (B, C, T)`` from nothing heard."""
        return self.run(x)


def centre_prefix_stats(x: Tensor, tau_frames: float, active_level: float) -> StreamState:
    """The :class:`RunningCentre` state ``{"num" (C,), "den" (1,), "age" (1,)}`` after ``x (C,
    T)`` from nothing heard (for training segments cut from inside an utterance)."""
    decay = math.exp(-1.0 / tau_frames)
    t = x.shape[-1]
    w = decay ** torch.arange(t - 1, -1, -1, dtype=torch.float64)
    a = (x.mean(0) > active_level).to(torch.float64) * w
    num = (x.to(torch.float64) * a).sum(-1)
    age = torch.tensor([1.0 - decay**t], dtype=torch.float64)
    return {"num": num.to(x.dtype), "den": a.sum().reshape(1).to(x.dtype), "age": age.to(x.dtype)}
