"""How well the training decoder rebuilds held-out singers' mels from the content frames.

The decoder of a ``"content"`` checkpoint knows only the training singers, so each held-out
singer gets a new embedding row, fitted (everything else frozen) on its train/valid lines; the
mel of its test lines is then rebuilt from (a) its own content frames and (b) the same content
cyclically shifted by half the utterance (the content no longer matches what is sung): the gap
between the two is what the content carries. F0, voiced flag and loudness are the singer's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from comostream.models.checkpoint_io import CheckpointError, load_state_strict
from comostream.models.config import config_from_dict
from comostream.training.content import ContentDecoder

__all__ = ["decoder_reconstruction"]

FIT_STEPS = 60  # Adam steps fitting the held-out singers' embeddings
FIT_LR = 0.05
SEGMENT = 128  # frames per fitting segment


class FrameData(Protocol):
    singer: str
    split: str
    mel: np.ndarray  # (n_mels, T)
    content: np.ndarray  # (D, T)
    f0: np.ndarray  # (T,) Hz
    voiced: np.ndarray  # (T,) bool
    loudness: np.ndarray  # (T,) dB
    active: np.ndarray  # (T,) bool


def _tensors(u: FrameData, a: int, b: int, shift: int = 0) -> dict[str, Tensor]:
    content = np.roll(u.content, shift, axis=1) if shift else u.content
    return {
        "content": torch.from_numpy(np.ascontiguousarray(content[:, a:b])),
        "f0": torch.from_numpy(u.f0[a:b].astype(np.float32)),
        "voiced": torch.from_numpy(u.voiced[a:b]),
        "loudness": torch.from_numpy(u.loudness[a:b].astype(np.float32)),
        "mel": torch.from_numpy(u.mel[:, a:b]),
        "active": torch.from_numpy(u.active[a:b]),
    }


def _l1(dec: ContentDecoder, b: dict[str, Tensor], spk: Tensor, mean: float, std: float) -> Tensor:
    """Per-frame L1 (natural-log mel) on active frames of a batch ``(B, ..., S)``."""
    pred = dec(b["content"], b["f0"], b["voiced"], b["loudness"], spk) * std + mean
    return (pred - b["mel"]).abs().mean(1)[b["active"]]


def decoder_reconstruction(ck: dict[str, Any], utts: Sequence[FrameData]) -> dict[str, Any]:
    """``{"content": L1, "shifted_content": L1, "fit_frames": n, "test_frames": n}``."""
    try:
        cfg = config_from_dict({"audio": ck["config"]["audio"], "content": ck["config"]["content"]})
        state, trained = ck["models"]["decoder"], list(ck["meta"]["singers"])
    except (KeyError, TypeError) as exc:
        msg = f"content checkpoint lacks the decoder or its singers ({exc})"
        raise CheckpointError(msg) from None
    c = cfg.content
    dec = ContentDecoder(c, len(trained), cfg.audio.n_mels)
    load_state_strict(dec, state, "content checkpoint: model 'decoder'")
    held = sorted({u.singer for u in utts})
    rows = dec.speakers.weight.detach().mean(0, keepdim=True).repeat(len(held), 1)
    dec.requires_grad_(False)
    dec.speakers = nn.Embedding.from_pretrained(rows.clone(), freeze=False)
    dec.eval()
    fit = [u for u in utts if u.split != "test"]
    segs = [
        (_tensors(u, a, a + SEGMENT), held.index(u.singer))
        for u in fit
        for a in range(0, u.mel.shape[1] - SEGMENT + 1, SEGMENT)
    ]
    batch = {k: torch.stack([s[k] for s, _ in segs]) for k in segs[0][0]}
    spk = torch.tensor([i for _, i in segs])
    opt = torch.optim.Adam(dec.speakers.parameters(), lr=FIT_LR)
    with torch.enable_grad():
        for _ in range(FIT_STEPS):
            opt.zero_grad()
            _l1(dec, batch, spk, c.mel_mean, c.mel_std).mean().backward()
            opt.step()
    out: dict[str, Any] = {"fit_frames": int(batch["active"].sum())}
    with torch.no_grad():
        for name, half in (("content", False), ("shifted_content", True)):
            errs = []
            for u in (u for u in utts if u.split == "test"):
                frames = u.mel.shape[1]
                shift = frames // 2 if half else 0
                b = {k: v[None] for k, v in _tensors(u, 0, frames, shift).items()}
                who = torch.tensor([held.index(u.singer)])
                errs.append(_l1(dec, b, who, c.mel_mean, c.mel_std))
            out[name] = float(torch.cat(errs).mean())
            out["test_frames"] = int(sum(e.numel() for e in errs))
    return out
