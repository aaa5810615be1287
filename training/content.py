"""``comostream train content``: train the built-in content encoder
(:mod:`comostream.models.content`).

Objective (information perturbation + bottleneck + speaker adversary): the encoder ``E`` sees a
WORLD-perturbed copy ``x~`` of an utterance (pitch shift, formant warp, EQ, breathiness, level;
:mod:`comostream.training.perturb`) and emits narrow content frames ``z = E(x~)``. A training-only
decoder ``G`` rebuilds the ORIGINAL normalised mel from ``z`` plus the original F0, voiced flag,
loudness and singer embedding; since ``G`` is told pitch, level and singer, ``z`` only needs
what is sung. A frame-wise singer classifier ``A`` is trained on ``z`` (detached), and the
encoder gets an adversarial term of weight ``w`` (``content.adversary_weight``)::

    loss = L1(G(z, f0, voiced, loudness, singer), mel) + CE(A(sg(z)), singer) + w * adv(z)
           [+ c * mean |z - E(x~2)|^2]

With ``content.bottleneck_noise`` ``s > 0`` the decoder reads ``z + s * N(0, 1)`` in training:
``z`` has a fixed power (unit RMS per channel), so the encoder spends it on what rebuilds the mel
best and what the singer embedding cannot give; faint traces of the singer drown.

The bracketed consistency term (``content.consistency_weight`` ``c > 0``) encodes a second
perturbed version ``x~2`` of the same frames (another pitch, formant warp, EQ and level) and asks
for the same content frames on active frames: invariance to a change of singer, learnt directly.

With ``content.centre_tau_frames > 0`` the encoder centres its input (and, with
``centre_output``, its content frames) on their causal running means (speaker normalisation,
:class:`comostream.models.streaming.RunningCentre`); each training segment's input centring
starts from its state after the utterance's earlier frames, the prior mean is the training
corpus's average (:func:`centre_prior`).

``adversary_mode = "confusion"`` (default): ``adv = CE(sg(A)(z), uniform) - log(n)``, the
cross-entropy of the (frozen) classifier's posterior against the uniform distribution, which
is minimal when it cannot tell the singers apart. ``"reverse"``: gradient reversal, ``adv =
-CE(sg(A)(z), singer)``; it lets the encoder make the classifier confidently *wrong* (accuracy
below chance), which hides nothing from a freshly trained probe. Both are computed on frames
with ``loudness > active_db``. Checkpoints (kind
``"content"``) hold ``encoder``, ``decoder`` and ``adversary``, optimiser, step, config and the
training singers (``meta.singers``); :func:`comostream.models.content.load_content_encoder` reads
them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from comostream.models.conditioner import F0_REF_HZ, LOUDNESS_REF_DB, LOUDNESS_SCALE_DB
from comostream.models.config import Config, ConfigError, ContentConfig
from comostream.models.content import CHECKPOINT_KIND, ContentEncoder, centre_level
from comostream.models.streaming import FrameLinear
from comostream.training.content_data import (
    CachedUtterance,
    PerturbedSegments,
    build_perturbation_cache,
    corpus_singers,
)
from comostream.training.corpus import CorpusError, load_corpus
from comostream.training.dataset import collate_segments
from comostream.training.loop import Trainer
from comostream.training.state import TrainState, make_state, seed_everything

__all__ = ["ContentDecoder", "SingerAdversary", "content_losses", "train_content"]

DECODER_KERNEL = 5  # frames
VALID_SEGMENTS = 32  # fixed validation segments (sample ids 0 .. n-1 of the valid split)


def frame_conditions(f0_hz: Tensor, voiced: Tensor, loudness_db: Tensor) -> Tensor:
    """``(B, 3, T)``: log2(f0 / 200 Hz) on voiced frames (0 elsewhere), voiced, loudness
    ``(dB + 40) / 20`` (the conditioner's scales)."""
    v = voiced.to(f0_hz.dtype)
    log_f0 = torch.log2(f0_hz.clamp(min=1.0) / F0_REF_HZ) * v
    loud = (loudness_db - LOUDNESS_REF_DB) / LOUDNESS_SCALE_DB
    return torch.stack([log_f0, v, loud], dim=1)


class ContentDecoder(nn.Module):
    """Training-only: ``(content (B, D, T), f0_hz, voiced, loudness_db (B, T), speaker (B,))``
    -> normalised mel ``(B, n_mels, T)``. Non-causal dilated residual conv stack; the singer
    embedding is added before every layer."""

    def __init__(self, cfg: ContentConfig, n_speakers: int, n_mels: int) -> None:
        super().__init__()
        c = cfg.decoder_channels
        self.speakers = nn.Embedding(n_speakers, cfg.speaker_dim)
        self.input = FrameLinear(cfg.content_dim + 3, c)
        self.spk = nn.ModuleList(nn.Linear(cfg.speaker_dim, c) for _ in range(cfg.decoder_layers))
        self.convs = nn.ModuleList(
            nn.Conv1d(
                c,
                c,
                DECODER_KERNEL,
                dilation=2 ** (i % 3),
                padding=(DECODER_KERNEL // 2) * 2 ** (i % 3),
            )
            for i in range(cfg.decoder_layers)
        )
        self.output = FrameLinear(c, n_mels)

    def forward(
        self, content: Tensor, f0_hz: Tensor, voiced: Tensor, loudness_db: Tensor, speaker: Tensor
    ) -> Tensor:
        h = self.input(torch.cat([content, frame_conditions(f0_hz, voiced, loudness_db)], 1))
        emb = self.speakers(speaker)
        for conv, spk in zip(self.convs, self.spk, strict=True):
            h = h + conv(F.gelu(h + spk(emb).unsqueeze(-1))) * (1.0 / math.sqrt(2.0))
        return self.output(F.gelu(h))


class SingerAdversary(nn.Module):
    """Frame-wise singer classifier: ``(B, D, T) -> logits (B, n_speakers, T)`` (an MLP)."""

    def __init__(self, cfg: ContentConfig, n_speakers: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            FrameLinear(cfg.content_dim, cfg.adversary_hidden),
            nn.GELU(),
            FrameLinear(cfg.adversary_hidden, cfg.adversary_hidden),
            nn.GELU(),
            FrameLinear(cfg.adversary_hidden, n_speakers),
        )

    def forward(self, content: Tensor) -> Tensor:
        return self.net(content)


def content_losses(
    encoder: ContentEncoder,
    decoder: ContentDecoder,
    adversary: SingerAdversary,
    batch: Mapping[str, Tensor],
    cfg: ContentConfig,
) -> dict[str, Tensor]:
    """``{"loss", "recon", "adv_ce", "adv_acc", "adv_enc"}`` for one batch of
    :class:`PerturbedSegments` (see the module docstring; ``adv_enc`` is the encoder's term).

    ``recon``: masked L1 between ``decoder(encoder(src), original conditions)`` and the
    normalised original mel; the classifier terms use frames of ``mask & loudness > active_db``.
    """
    centre = None
    if "centre_num" in batch:  # the input centring's state at the segment start
        centre = {k: batch[f"centre_{k}"] for k in ("num", "den", "age")}
    z = encoder(batch["src"], centre)
    mask = batch["mask"].to(z.dtype)
    target = encoder.normalize_input(batch["mel"])
    heard = z
    if cfg.bottleneck_noise > 0 and decoder.training:  # information bottleneck (training only)
        heard = z + cfg.bottleneck_noise * torch.randn_like(z)
    pred = decoder(heard, batch["f0"], batch["voiced"], batch["loudness"], batch["speaker"])
    recon = ((pred - target).abs().mean(1) * mask).sum() / mask.sum().clamp(min=1.0)
    active = batch["mask"] & (batch["loudness"] > cfg.active_db)
    labels = batch["speaker"][:, None].expand_as(active)[active]
    zero = z.sum() * 0.0
    if not bool(active.any()):  # no active frame in the batch
        return {
            "loss": recon + zero,
            "recon": recon.detach(),
            "adv_ce": zero.detach(),
            "adv_acc": zero.detach(),
            "adv_enc": zero.detach(),
        }
    own = adversary(z.detach()).transpose(1, 2)[active]  # trains the classifier only
    adv_ce = F.cross_entropy(own, labels)
    frozen = {name: prm.detach() for name, prm in adversary.named_parameters()}
    seen = torch.func.functional_call(adversary, frozen, (z,)).transpose(1, 2)[active]
    if cfg.adversary_mode == "confusion":  # CE against the uniform posterior, minus its minimum
        adv_enc = -F.log_softmax(seen, dim=-1).mean(-1).mean() - math.log(seen.shape[-1])
    else:  # gradient reversal: the encoder ascends the classifier's cross-entropy
        adv_enc = -F.cross_entropy(seen, labels)
    loss = recon + adv_ce + cfg.adversary_weight * adv_enc
    adv_acc = (own.argmax(-1) == labels).float().mean()
    out = {
        "recon": recon.detach(),
        "adv_ce": adv_ce.detach(),
        "adv_acc": adv_acc.detach(),
        "adv_enc": adv_enc.detach(),
    }
    if cfg.consistency_weight > 0 and "src2" in batch:
        centre2 = None
        if "centre2_num" in batch:
            centre2 = {k: batch[f"centre2_{k}"] for k in ("num", "den", "age")}
        z2 = encoder(batch["src2"], centre2)
        cons = (z - z2).pow(2).mean(1)[active].mean()
        loss = loss + cfg.consistency_weight * cons
        out["consistency"] = cons.detach()
    return {"loss": loss, **out}


def centre_prior(entries: Sequence[CachedUtterance], cfg: ContentConfig) -> Tensor:
    """``(n_mels,)``: the mean normalised perturbed mel over the active frames of ``entries``
    (the input centring's prior: where a stream starts before anything is heard)."""
    level = centre_level(cfg)
    total, count = None, 0
    for e in entries:
        with np.load(e.path) as data:
            x = (data["perturbed"] - cfg.mel_mean) / cfg.mel_std  # (P, n_mels, T)
        x = x.transpose(1, 0, 2).reshape(x.shape[1], -1)
        active = x[:, x.mean(0) > level]
        total = active.sum(1) if total is None else total + active.sum(1)
        count += active.shape[1]
    if total is None or count == 0:
        raise CorpusError("content: no active frames to set the input centring's prior from")
    return torch.from_numpy(total / count).float()


def _step_fn(cfg: ContentConfig) -> Callable[[TrainState, Any], Mapping[str, Tensor]]:
    def step(state: TrainState, batch: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        m = state.models
        return content_losses(m["encoder"], m["decoder"], m["adversary"], batch, cfg)  # type: ignore

    return step


def _valid_fn(
    data: PerturbedSegments, cfg: ContentConfig
) -> Callable[[TrainState], Mapping[str, float]]:
    batch = data.batch(range(VALID_SEGMENTS))

    def valid(state: TrainState) -> Mapping[str, float]:
        b = {k: v.to(state.device) for k, v in batch.items()}
        m = state.models
        out = content_losses(m["encoder"], m["decoder"], m["adversary"], b, cfg)  # type: ignore
        return {k: float(v) for k, v in out.items()}

    return valid


def train_content(
    cfg: Config,
    data_dir: str | Path,
    run_dir: str | Path,
    *,
    dry_run: bool = False,
    resume: str | Path | None = None,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Path:
    """Train on the first ``content.train_singers`` singers of ``data_dir`` (0 = all); returns
    ``RUN_DIR/last.pt``. Perturbed mels are cached under ``cache_dir`` (default
    ``RUN_DIR/perturbed``) and reused by later runs with the same settings."""
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    c = cfg.content
    if c.codebook_size:
        raise ConfigError(
            "content: codebook_size is fitted after training, by `comostream train codebook "
            "RUN_DIR/last.pt`; train with codebook_size = 0"
        )
    order = corpus_singers(data_dir, load_corpus(data_dir))
    n = c.train_singers or len(order)
    if n > len(order):
        raise CorpusError(
            f"{data_dir}: content.train_singers = {n}, but the corpus has {len(order)} singers"
        )
    singers = order[:n]
    cache = Path(cache_dir) if cache_dir is not None else run_dir / "perturbed"
    entries = build_perturbation_cache(data_dir, cache, cfg, singers, progress=progress)
    split = {s: [e for e in entries if e.split == s] for s in ("train", "valid")}
    if not split["train"]:
        raise CorpusError(f"{data_dir}: no training utterances for singers {singers}")

    def segments(name: str, seed: int) -> PerturbedSegments:
        return PerturbedSegments(
            split[name],
            singers,
            cfg.train.segment_frames,
            c.gain_db,
            cfg.audio.log_floor,
            seed,
            centre=c,
            pair=c.consistency_weight > 0,
        )

    seed_everything(cfg.train.seed)
    models = {
        "encoder": ContentEncoder(c, cfg.audio),
        "decoder": ContentDecoder(c, len(singers), cfg.audio.n_mels),
        "adversary": SingerAdversary(c, len(singers)),
    }
    if models["encoder"].centre is not None:  # start every stream from the corpus average
        models["encoder"].centre.prior.copy_(centre_prior(split["train"], c))
    state = make_state(models, cfg.train, device)
    state.meta = {"singers": list(singers), "corpus": str(data_dir)}
    valid = _valid_fn(segments("valid", cfg.train.seed + 1), c) if split["valid"] else None
    trainer = Trainer(
        cfg,
        state,
        _step_fn(c),
        segments("train", cfg.train.seed),
        run_dir,
        kind=CHECKPOINT_KIND,
        collate_fn=collate_segments,
        valid_fn=valid,
        dry_run=dry_run,
        progress=progress,
    )
    if resume is not None:
        trainer.resume(resume)
    trainer.fit()
    return run_dir / "last.pt"
