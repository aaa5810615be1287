"""``comostream train vocoder``: train the built-in vocoder (:mod:`comostream.models.vocoder`).

Ground-truth mel and F0 from a feature folder, waveforms from its corpus
(:mod:`comostream.training.vocoder_data`); random segments of the train split, each run with
``vocoder.context_frames`` extra past frames that are not scored (so the causal stack sees a
real past, as in streaming). The loss (:mod:`comostream.training.vocoder_losses`) of one step::

    loss = stft_weight * (sc + log_mag) + mel_weight * mel_l1
           + [step >= adv_start] * (adv_weight * adv_g + fm_weight * fm + disc)

With ``adv_weight > 0`` the discriminators are trained in the same backward pass: the
generator's terms see the discriminators through *detached* parameters
(``torch.func.functional_call``) and ``disc`` sees the generator's output detached, so each
optimiser (``generator``, ``discriminator``) only receives its own gradients. Checkpoints
(kind ``"vocoder"``) hold ``models.vocoder`` and ``models.discriminator``, both optimisers,
step, RNG states, config and ``meta`` (feature folder, corpus); :func:`comostream.models.vocoder.
load_vocoder` reads them. :func:`export_vocoder` writes the inference-only file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from comostream.models.checkpoint_io import load_checkpoint, load_state_strict
from comostream.models.config import Config
from comostream.models.mel import MelSpectrogram
from comostream.models.vocoder import CHECKPOINT_KIND, EXPORT_KIND, Vocoder, load_vocoder
from comostream.training.checkpoint import save_checkpoint
from comostream.training.distributed import setup_distributed
from comostream.training.loop import Trainer
from comostream.training.state import TrainState, make_state, seed_everything
from comostream.training.vocoder_data import VocoderSegments, collate, corpus_of
from comostream.training.vocoder_losses import (
    Discriminators,
    StftLoss,
    discriminator_loss,
    feature_matching,
    generator_adv_loss,
    mel_l1,
)

__all__ = ["VocoderLoss", "export_vocoder", "train_vocoder"]

VALID_SEGMENTS = 8  # fixed validation segments (sample ids 0 .. n-1 of the valid split)


class VocoderLoss:
    """The step's named losses for a batch of :class:`VocoderSegments` (see module docstring)."""

    def __init__(self, cfg: Config, device: torch.device) -> None:
        self.cfg, self.vc = cfg, cfg.vocoder
        self.stft = StftLoss(self.vc.stft_ffts).to(device)
        self.mel = MelSpectrogram(cfg.audio).to(device)
        self.skip = self.vc.context_frames * cfg.audio.hop_length  # unscored samples

    def __call__(
        self,
        vocoder: Vocoder,
        disc: Discriminators | None,
        batch: Mapping[str, Tensor],
        adversarial: bool,
    ) -> dict[str, Tensor]:
        vc = self.vc
        pred = vocoder(batch["mel"], batch["f0"], batch["offset"])[:, self.skip :]
        real = batch["audio"][:, self.skip :]
        sc, mag = self.stft(pred, real)
        mel = mel_l1(self.mel, pred, real)
        out = {"stft_sc": sc, "stft_mag": mag, "mel": mel}
        loss = vc.stft_weight * (sc + mag) + vc.mel_weight * mel
        if adversarial and disc is not None:
            frozen = {k: p.detach() for k, p in disc.named_parameters()}
            fake_g = torch.func.functional_call(disc, frozen, (pred,))
            real_d = disc(real)
            fake_d = disc(pred.detach())
            out["adv_g"] = generator_adv_loss(fake_g)
            out["fm"] = feature_matching(real_d, fake_g)
            out["disc"] = discriminator_loss(real_d, fake_d)
            loss = loss + vc.adv_weight * out["adv_g"] + vc.fm_weight * out["fm"] + out["disc"]
        out = {k: v if k == "loss" else v.detach() for k, v in out.items()}
        out["loss"] = loss
        return out


def _device() -> torch.device:
    """This rank's device (joins the torchrun process group when launched under torchrun)."""
    return setup_distributed(None)[1]


def train_vocoder(
    cfg: Config,
    data: str | Path,
    out: str | Path,
    *,
    corpus: str | Path | None = None,
    resume: str | Path | None = None,
    init: str | Path | None = None,
    dry_run: bool = False,
    progress: bool = True,
) -> TrainState:
    """Train on feature folder ``data`` (waveforms from ``corpus``, default: the features'
    ``source``) into run folder ``out``; returns the final state (``out/last.pt`` written).

    ``init``: start from this vocoder's weights (a ``train vocoder`` checkpoint or export of the
    same sizes) with fresh optimisers at step 0: fine-tuning, e.g. on GTA mels
    (:mod:`comostream.training.vocoder_gta`)."""
    data, out = Path(data), Path(out)
    device = _device()
    seed_everything(cfg.train.seed)
    vc = cfg.vocoder
    src = corpus_of(data, Path(corpus) if corpus is not None else None)
    frames = vc.context_frames + vc.segment_frames
    train = VocoderSegments(data, src, "train", frames, cfg.audio, seed=cfg.train.seed)
    try:
        valid_set = VocoderSegments(data, src, "valid", frames, cfg.audio, seed=cfg.train.seed + 1)
        valid_batch: dict[str, Tensor] | None = valid_set.batch(range(VALID_SEGMENTS))
    except ValueError:  # FeatureError: no valid split
        valid_batch = None
    vocoder = Vocoder(vc, cfg.audio)
    if init is not None:
        load_state_strict(vocoder, load_vocoder(init).state_dict(), f"--init {init}")
    vocoder = vocoder.to(device)
    disc = Discriminators(vc).to(device)
    tc = cfg.train
    optimizers = {
        "generator": torch.optim.AdamW(
            vocoder.parameters(), lr=tc.lr, betas=(0.8, 0.99), weight_decay=tc.weight_decay
        ),
        "discriminator": torch.optim.AdamW(
            disc.parameters(), lr=tc.lr, betas=(0.8, 0.99), weight_decay=tc.weight_decay
        ),
    }
    state = make_state(
        {"vocoder": vocoder, "discriminator": disc}, tc, device, optimizers=optimizers
    )
    state.meta = {
        "data": str(data),
        "corpus": str(src),
        **({"init": str(init)} if init is not None else {}),
    }
    losses = VocoderLoss(cfg, device)

    def step(st: TrainState, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        adversarial = vc.adv_weight > 0 and st.step >= vc.adv_start
        m = st.models
        return losses(m["vocoder"], m["discriminator"], batch, adversarial)  # type: ignore[arg-type]

    def validate(st: TrainState) -> dict[str, float]:
        assert valid_batch is not None
        b = {k: v.to(device) for k, v in valid_batch.items()}
        res = losses(st.models["vocoder"], None, b, adversarial=False)  # type: ignore[arg-type]
        return {k: float(v) for k, v in res.items()}

    trainer = Trainer(
        cfg,
        state,
        step,
        train,
        out,
        kind=CHECKPOINT_KIND,
        collate_fn=collate,
        valid_fn=validate if valid_batch is not None else None,
        dry_run=dry_run,
        progress=progress,
    )
    if resume is not None:
        trainer.resume(resume)
    return trainer.fit()


def export_vocoder(checkpoint: str | Path, output: str | Path) -> Path:
    """Write the inference-only file (kind ``"vocoder-export"``: config + vocoder weights) of a
    ``train vocoder`` checkpoint; returns its path."""
    vocoder = load_vocoder(checkpoint)
    meta: Any = load_checkpoint(checkpoint, kind=CHECKPOINT_KIND).get("meta", {})
    payload = {"kind": EXPORT_KIND, **vocoder.export_payload(), "meta": dict(meta)}
    return save_checkpoint(output, payload)
