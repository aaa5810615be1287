"""Acoustic-model stages on the shared training loop: teacher, distillation, finetune, export.

- teacher: conditioner + EDM denoiser trained with the EDM loss (Karras et al. 2022).
- distill: student (consistency preconditioning) initialised from the teacher; target = EMA of
  the student; the frozen teacher takes one Heun step between adjacent Karras sigmas; loss between
  student(x_{n+1}) and target(x_n) (Song et al. 2023, Alg. 2). The conditioner is the teacher's,
  frozen. The training checkpoint holds student, target, teacher, conditioner, optimiser,
  scheduler, step and RNG states, so it resumes exactly and needs no other file.
- finetune: adds a singer to the table and trains only that row through the frozen teacher's
  EDM loss; every other singer's row and every other weight stay bit-identical.
- export: the inference file (conditioner + target + singers + config).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from comostream.models.acoustic import (
    AcousticModel,
    build_conditioner,
    build_denoiser,
    condition_from_features,
)
from comostream.models.audio import load_audio
from comostream.models.checkpoint_io import CheckpointError, load_checkpoint, load_state_strict
from comostream.models.config import Config, config_from_dict
from comostream.models.content import load_content_encoder
from comostream.models.edm import denormalise_mel, normalise_mel
from comostream.models.samplers import consistency_onestep, heun_sampler, sampling_sigmas
from comostream.models.vocoder import load_vocoder
from comostream.training.checkpoint import save_checkpoint
from comostream.training.corpus import load_corpus
from comostream.training.dataset import DEFAULT_ARRAYS, SegmentDataset, collate_segments
from comostream.training.distributed import setup_distributed
from comostream.training.loop import Trainer
from comostream.training.losses import (
    consistency_distillation_loss,
    distillation_sigmas,
    edm_loss,
    ema_update,
    sample_distill_index,
    sample_edm_sigma,
)
from comostream.training.state import TrainState, make_state, seed_everything

__all__ = ["RunOptions", "export_model", "train_distill", "train_finetune", "train_teacher"]

VALID_ITEMS = 8  # fixed validation segments (seeded)


@dataclass(frozen=True)
class RunOptions:
    """What every stage takes besides the config: data, run folder, resume, dry run."""

    data: Path
    out: Path
    resume: Path | None = None
    dry_run: bool = False
    progress: bool = True


def _arrays(cfg: Config) -> tuple[str, ...]:
    return DEFAULT_ARRAYS + (("content",) if cfg.model.content_dim > 0 else ())


def _datasets(
    cfg: Config, data: Path, singer: str | None = None
) -> tuple[SegmentDataset, dict[str, Tensor] | None]:
    """The training segments (of one ``singer`` if given) and a fixed validation batch (None
    without a valid split)."""
    arrays, seg = _arrays(cfg), cfg.train.segment_frames
    train = SegmentDataset(data, "train", seg, seed=cfg.train.seed, arrays=arrays, singer=singer)
    try:
        valid = SegmentDataset(data, "valid", seg, seed=cfg.train.seed + 1, arrays=arrays)
    except ValueError:  # FeatureError: no valid split
        return train, None
    return train, valid.batch(range(VALID_ITEMS))


def mel_distance(pred_mel: Tensor, mel: Tensor, mask: Tensor) -> float:
    """Mean absolute log-mel difference over real frames (natural-log units)."""
    m = mask.to(mel.dtype).unsqueeze(1).expand_as(mel)
    return float(((pred_mel - mel).abs() * m).sum() / m.sum().clamp(min=1.0))


def _valid_noise(batch: dict[str, Tensor]) -> Tensor:
    gen = torch.Generator().manual_seed(1234)
    return torch.randn(batch["mel"].shape, generator=gen).to(batch["mel"].device)


def _device() -> torch.device:
    """This rank's device (joins the torchrun process group when launched under torchrun)."""
    return setup_distributed(None)[1]


# ---------------------------------------------------------------------------- teacher


def train_teacher(cfg: Config, opts: RunOptions) -> TrainState:
    """Train conditioner + EDM denoiser on ``opts.data`` (a feature folder) into ``opts.out``."""
    device = _device()
    seed_everything(cfg.train.seed)
    train, valid = _datasets(cfg, opts.data)
    models = {
        "conditioner": build_conditioner(cfg, train.singers),
        "denoiser": build_denoiser(cfg, consistency=False),
    }
    state = make_state(models, cfg.train, device)
    state.meta["speakers"] = list(train.singers)

    def step(st: TrainState, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        cond = condition_from_features(st.models["conditioner"], batch, batch["speaker"])
        x0 = normalise_mel(batch["mel"], cfg.edm)
        sigma = sample_edm_sigma(x0.shape[0], None, cfg.edm.p_mean, cfg.edm.p_std, x0.device)
        noise = torch.randn_like(x0)
        return {"edm": edm_loss(st.models["denoiser"], x0, cond, sigma, noise, batch["mask"])}

    def validate(st: TrainState) -> dict[str, float]:
        assert valid is not None
        b = {k: v.to(device) for k, v in valid.items()}
        cond = condition_from_features(st.models["conditioner"], b, b["speaker"])
        x = heun_sampler(st.models["denoiser"], _valid_noise(b), cond, sampling_sigmas(cfg.edm))
        return {"teacher_mel_l1": mel_distance(denormalise_mel(x, cfg.edm), b["mel"], b["mask"])}

    trainer = Trainer(
        cfg,
        state,
        step,
        train,
        opts.out,
        kind="teacher",
        collate_fn=collate_segments,
        valid_fn=validate if valid else None,
        dry_run=opts.dry_run,
        progress=opts.progress,
    )
    if opts.resume:
        trainer.resume(opts.resume)
    return trainer.fit()


def load_teacher(path: Path) -> tuple[Config, list[str], dict[str, dict[str, Tensor]]]:
    """Config, singer names and model state dicts of a teacher checkpoint."""
    ck = load_checkpoint(path, kind="teacher")
    try:
        cfg = config_from_dict(ck["config"], f"{path} (config)")
        return cfg, list(ck["meta"]["speakers"]), ck["models"]
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: malformed teacher checkpoint ({exc})") from None


# ---------------------------------------------------------------------------- distillation


def _distill_models(cfg: Config, speakers: list[str]) -> dict[str, Any]:
    return {
        "conditioner": build_conditioner(cfg, speakers).requires_grad_(False),
        "teacher": build_denoiser(cfg, consistency=False).requires_grad_(False),
        "student": build_denoiser(cfg, consistency=True),
        "target": build_denoiser(cfg, consistency=True).requires_grad_(False),
    }


def train_distill(cfg: Config, teacher_ckpt: Path, opts: RunOptions) -> TrainState:
    """Consistency distillation of ``teacher_ckpt`` on ``opts.data`` into ``opts.out``.

    The model architecture comes from the teacher's config; ``cfg`` supplies [edm] distillation
    settings and [train].
    """
    device = _device()
    seed_everything(cfg.train.seed)
    tcfg, speakers, states = load_teacher(teacher_ckpt)
    cfg = dataclasses.replace(cfg, model=tcfg.model, audio=tcfg.audio)
    train, valid = _datasets(cfg, opts.data)
    if list(train.singers) != speakers:
        raise CheckpointError(
            f"{teacher_ckpt}: singers {speakers} differ from the features' {train.singers}"
        )
    models = _distill_models(cfg, speakers)
    load_state_strict(models["conditioner"], states["conditioner"], f"{teacher_ckpt}: conditioner")
    for name in ("teacher", "student", "target"):
        load_state_strict(models[name], states["denoiser"], f"{teacher_ckpt}: denoiser")
    state = make_state(models, cfg.train, device)
    state.meta["speakers"] = speakers
    sigmas = distillation_sigmas(cfg.edm)
    teacher_ref: dict[str, Any] = {}

    def step(st: TrainState, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        m = st.models
        with torch.no_grad():
            cond = condition_from_features(m["conditioner"], batch, batch["speaker"])
        x0 = normalise_mel(batch["mel"], cfg.edm)
        n = sample_distill_index(x0.shape[0], cfg.edm.distill_steps, None, x0.device)
        loss = consistency_distillation_loss(
            m["student"],
            m["target"],
            m["teacher"],
            x0,
            cond,
            n,
            sigmas,
            torch.randn_like(x0),
            cfg.edm.distill_distance,
            mask=batch["mask"],
        )
        return {"consistency": loss}

    def validate(st: TrainState) -> dict[str, float]:
        """Target one-step vs ground truth and vs the teacher's N-step output (same noise)."""
        assert valid is not None
        m, b = st.models, {k: v.to(device) for k, v in valid.items()}
        cond = condition_from_features(m["conditioner"], b, b["speaker"])
        noise = _valid_noise(b)
        if not teacher_ref:  # the frozen teacher's output never changes: compute it once
            x = heun_sampler(m["teacher"], noise, cond, sampling_sigmas(cfg.edm))
            teacher_ref["mel"] = denormalise_mel(x, cfg.edm)
            teacher_ref["l1"] = mel_distance(teacher_ref["mel"], b["mel"], b["mask"])
        one = denormalise_mel(
            consistency_onestep(m["target"], noise, cond, cfg.edm.sigma_max), cfg.edm
        )
        to_teacher = mel_distance(one, teacher_ref["mel"], b["mask"])
        return {
            "target_mel_l1": mel_distance(one, b["mel"], b["mask"]),
            "teacher_mel_l1": teacher_ref["l1"],
            "target_to_teacher_l1": to_teacher,
        }

    trainer = Trainer(
        cfg,
        state,
        step,
        train,
        opts.out,
        kind="distill",
        collate_fn=collate_segments,
        valid_fn=validate if valid else None,
        after_step=lambda st: ema_update(
            st.models["target"], st.models["student"], cfg.edm.ema_rate
        ),
        dry_run=opts.dry_run,
        progress=opts.progress,
    )
    if opts.resume:
        trainer.resume(opts.resume)
    return trainer.fit()


def load_distilled(path: Path) -> tuple[Config, list[str], dict[str, Any]]:
    """Config, singers and the models of a distillation (or finetune) checkpoint."""
    ck = load_checkpoint(path, kind=("distill", "finetune"))
    try:
        cfg = config_from_dict(ck["config"], f"{path} (config)")
        speakers = list(ck["meta"]["speakers"])
        models = _distill_models(cfg, speakers)
        for name, module in models.items():
            load_state_strict(module, ck["models"][name], f"{path}: {name}")
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: malformed distillation checkpoint ({exc})") from None
    return cfg, speakers, models


# ---------------------------------------------------------------------------- finetune


def train_finetune(cfg: Config, init: Path, speaker: str, opts: RunOptions) -> TrainState:
    """Add ``speaker`` to a distilled model and learn only its table row on ``opts.data``.

    ``opts.data``: a feature folder holding singer ``speaker`` (its train split is used), or a
    folder of that singer's recordings (``*.wav|flac|ogg``), whose features are then prepared
    into ``opts.out/features`` with the model's own feature settings. The row is trained through
    the frozen teacher's EDM loss; the target shares the conditioner, so the new singer works in
    one step while every other singer stays bit-identical.
    """
    device = _device()
    seed_everything(cfg.train.seed)
    mcfg, speakers, models = load_distilled(init)
    if speaker in speakers:
        raise ValueError(f"singer {speaker!r} is already in {init}; pick a new name")
    cfg = dataclasses.replace(
        cfg, model=mcfg.model, audio=mcfg.audio, edm=mcfg.edm, features=mcfg.features, f0=mcfg.f0
    )
    feat_dir = Path(opts.data)
    if not (feat_dir / "features.json").is_file():
        feat_dir = _singer_features(feat_dir, speaker, opts.out, cfg, opts.progress)
    data, _ = _datasets(cfg, feat_dir, singer=speaker)
    table = models["conditioner"].speakers
    row = table.add_speaker(speaker)
    weight = table.embedding.weight
    weight.requires_grad_(True)
    keep = torch.zeros_like(weight)
    keep[row] = 1.0
    weight.register_hook(lambda g: g * keep.to(g.device))  # only the new row learns
    opt = torch.optim.AdamW([weight], lr=cfg.train.lr, weight_decay=0.0)
    state = make_state(models, cfg.train, device, optimizers={"main": opt})
    state.meta["speakers"] = list(table.names)
    index = torch.tensor(row, device=device)

    def step(st: TrainState, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        spk = index.expand(batch["mel"].shape[0])
        cond = condition_from_features(st.models["conditioner"], batch, spk)
        x0 = normalise_mel(batch["mel"], cfg.edm)
        sigma = sample_edm_sigma(x0.shape[0], None, cfg.edm.p_mean, cfg.edm.p_std, x0.device)
        loss = edm_loss(st.models["teacher"], x0, cond, sigma, torch.randn_like(x0), batch["mask"])
        return {"edm": loss}

    trainer = Trainer(
        cfg,
        state,
        step,
        data,
        opts.out,
        kind="finetune",
        collate_fn=collate_segments,
        dry_run=opts.dry_run,
        progress=opts.progress,
    )
    if opts.resume:
        trainer.resume(opts.resume)
    return trainer.fit()


def _singer_features(
    singer_dir: Path, speaker: str, out: Path, cfg: Config, progress: bool
) -> Path:
    """Features of one singer's recordings (``singer_dir/*.wav``) in ``out/features``."""
    from comostream.training.corpus import CorpusError
    from comostream.training.features import prepare_features

    audio = [p for ext in ("wav", "flac", "ogg") for p in singer_dir.glob(f"*.{ext}")]
    if not singer_dir.is_dir() or not audio:
        raise CorpusError(
            f"{singer_dir}: neither a feature folder (features.json) nor a folder "
            "of recordings (*.wav, *.flac, *.ogg)"
        )
    corpus = out / "corpus"
    (corpus).mkdir(parents=True, exist_ok=True)
    link = corpus / speaker
    if not link.exists():
        link.symlink_to(singer_dir.resolve(), target_is_directory=True)
    prepare_features(corpus, out / "features", cfg, progress=progress)
    return out / "features"


# ---------------------------------------------------------------------------- export


def singer_prints(corpus: Path, singers: list[str], per_singer: int = 6) -> dict[str, dict]:
    """Voice prints (:mod:`comostream.models.voiceprint`) of ``singers`` from their train-split
    recordings in ``corpus``: the mean of up to ``per_singer`` recordings' prints (median F0: the
    median)."""
    from comostream.models.voiceprint import voice_print

    utts = load_corpus(corpus)
    prints: dict[str, dict] = {}
    for name in singers:
        mine = [u for u in utts if u.singer == name and u.split == "train"][:per_singer]
        if not mine:
            continue
        ps = [voice_print(load_audio(u.path)) for u in mine]
        prints[name] = {
            "mcep": [float(v) for v in np.mean([p["mcep"] for p in ps], axis=0)],
            "f0_median": float(np.median([p["f0_median"] for p in ps])),
        }
    return prints


def export_model(
    ckpt: Path, out: Path, vocoder: Path | None = None, corpus: Path | None = None
) -> Path:
    """Write the inference file of a distillation/finetune checkpoint: the target, conditioner
    and singer table, plus a copy of the content encoder the features came from and, when
    ``vocoder`` (a ``train vocoder`` checkpoint or export) is given, the vocoder; with
    ``corpus``, the singers' voice prints (for the demo's similarity figure)."""
    cfg, speakers, models = load_distilled(ckpt)
    encoder = None
    if cfg.model.content_dim > 0:
        source = cfg.features.content_checkpoint
        if not source:
            raise CheckpointError(
                f"{ckpt}: the model takes content but its config names no "
                "[features] content_checkpoint to export with it"
            )
        encoder = load_content_encoder(source)
    model = AcousticModel(cfg, speakers, encoder.cfg if encoder is not None else None)
    model.conditioner.load_state_dict(models["conditioner"].state_dict())
    model.target.load_state_dict(models["target"].state_dict())
    if encoder is not None and model.content_encoder is not None:
        model.content_encoder.load_state_dict(encoder.state_dict())
    payload = copy.deepcopy(model.export_payload())
    if vocoder is not None:
        payload["vocoder"] = load_vocoder(vocoder).export_payload()
    if corpus is not None:
        payload["voiceprints"] = singer_prints(corpus, speakers)
    return save_checkpoint(out, payload)
