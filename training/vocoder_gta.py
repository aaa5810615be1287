"""Ground-truth-aligned (GTA) features: the acoustic model's own mels, for vocoder fine-tuning.

A vocoder trained on the mels of real recordings meets, at conversion time, the one-step
target's mels, which are smoother (less harmonic detail, blurred formants); it answers them with
too much noise and a weak fundamental. Fine-tuning it on *generated* mels that are frame-aligned
with the real recordings (Tacotron 2 / HiFi-GAN practice) teaches it to render those mels as
the recordings they stand for.

:func:`write_gta_features` copies a feature folder with every utterance's ``mel`` replaced by
the distilled target's one-step output from that utterance's own features (its own singer, no
transposition, the realtime path's counter-hashed noise of ``[realtime] seed`` scaled by
``[realtime] noise_scale``, so the mels are those the engine would make). F0, loudness, content
and the index are copied unchanged, and ``features.json`` keeps the corpus (``source``, made
absolute) and records ``gta_model``, ``gta_seed`` and ``gta_noise_scale``; the folder is then a
normal ``--data`` for ``comostream train vocoder --init``. An interrupted run resumes where it
stopped; ``gta.json``, written first, makes a resume with another seed or noise scale a clear
error instead of a folder of two kinds of mel.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from comostream.models.acoustic import AcousticModel
from comostream.models.noise import frame_noise
from comostream.training.feature_index import FeatureError, load_feature_index, write_text_atomic
from comostream.training.features import save_npz
from comostream.training.vocoder_data import corpus_of

__all__ = ["gta_mel", "write_gta_features"]


def gta_mel(
    model: AcousticModel,
    arrays: dict[str, np.ndarray],
    singer: str,
    seed: int,
    noise_scale: float | None = None,
) -> np.ndarray:
    """The one-step target's log-mel ``(n_mels, T)`` float32 from one utterance's features
    (``f0`` (T,) Hz, ``voiced`` (T,), ``loudness`` (T,) dB, ``content`` (C, T) if the model
    takes content), with the frame-indexed noise of ``seed`` times ``noise_scale`` (default: the
    model's ``[realtime] noise_scale``, as the engine draws it); computed on the model's device."""
    frames = int(arrays["f0"].shape[0])
    feats = {
        k: torch.from_numpy(np.asarray(arrays[k], dtype=np.float32)).unsqueeze(0)
        for k in ("f0", "loudness")
    }
    feats["voiced"] = torch.from_numpy(np.asarray(arrays["voiced"], dtype=bool)).unsqueeze(0)
    if "content" in arrays:
        feats["content"] = torch.from_numpy(
            np.asarray(arrays["content"], dtype=np.float32)
        ).unsqueeze(0)
    index = torch.arange(frames, dtype=torch.int64).unsqueeze(0)
    scale = model.cfg.realtime.noise_scale if noise_scale is None else noise_scale
    noise = scale * frame_noise(index, model.cfg.audio.n_mels, seed)
    where = next(model.parameters()).device
    feats = {k: v.to(where) for k, v in feats.items()}
    return model.generate(feats, singer, noise.to(where))[0].cpu().numpy().astype(np.float32)


MARKER = "gta.json"  # the noise the folder's mels are drawn with, written before the first


def _check_resume(out_dir: Path, noise: dict[str, float]) -> None:
    """Write ``out_dir``'s :data:`MARKER`, or check that an earlier (interrupted) run drew its
    mels with the same noise: resuming with another seed or noise scale would mix two kinds of
    mel in one folder. Raises FeatureError then."""
    marker = out_dir / MARKER
    if marker.is_file():
        try:
            before = json.loads(marker.read_text())
        except (OSError, ValueError) as exc:
            raise FeatureError(f"{marker}: unreadable ({exc}); remove {out_dir}") from None
        if before != noise:
            raise FeatureError(
                f"{out_dir} holds GTA mels drawn with {before}; this run draws them with "
                f"{noise} ([realtime] seed / noise_scale): remove the folder or give another "
                "--out"
            )
        return
    write_text_atomic(marker, json.dumps(noise) + "\n")


def write_gta_features(
    model: AcousticModel,
    feat_dir: str | Path,
    out_dir: str | Path,
    *,
    model_name: str = "",
    progress: bool = True,
) -> Path:
    """Write the GTA copy of ``feat_dir`` into ``out_dir`` (see the module docstring); returns
    ``out_dir``. Utterances already written are kept, so an interrupted run continues.

    Raises FeatureError when a singer of the features is not in the model's table.
    """
    feat_dir, out_dir = Path(feat_dir), Path(out_dir)
    index, meta = load_feature_index(feat_dir)
    missing = sorted(set(index.singers) - set(model.speakers))
    if missing:
        raise FeatureError(
            f"{feat_dir}: singers {', '.join(missing)} are not in the model "
            f"(it knows {', '.join(model.speakers)})"
        )
    source = corpus_of(feat_dir, None).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    seed, scale = model.cfg.realtime.seed, model.cfg.realtime.noise_scale
    _check_resume(out_dir, {"gta_seed": seed, "gta_noise_scale": scale})
    model.eval()
    for e in tqdm(
        index.entries, desc="gta mels", unit="utt", disable=not progress, file=sys.stderr
    ):
        dst = out_dir / e.path
        if dst.is_file():
            continue
        with np.load(feat_dir / e.path) as data:
            arrays = {k: data[k] for k in data.files}
        arrays["mel"] = gta_mel(model, arrays, e.singer, seed, scale)
        save_npz(dst, arrays)
    for name in ("index.jsonl", "skipped.jsonl"):
        if (feat_dir / name).is_file():
            shutil.copyfile(feat_dir / name, out_dir / name)
    meta = {**meta, "source": str(source), "gta_model": model_name, "gta_seed": seed}
    meta["gta_noise_scale"] = scale
    write_text_atomic(out_dir / "features.json", json.dumps(meta, indent=2) + "\n")
    return out_dir
