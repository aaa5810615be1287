"""`comostream bench voice`: how close conversions into an added singer come to the real voice.

Held-out sources (the shipped example recordings and any ``--sources``) are converted offline into
singer ``NAME`` of a model made by ``comostream voice add``, transposed by ``auto`` (whole
semitones from the source's median F0 to ``NAME``'s stored register). Per conversion:

* ``spk_sim_target``: cosine of the output's Resemblyzer embedding with the mean embedding of
  ``NAME``'s held-out recordings (``--refs``); ``spk_sim_source``: with the source recording's
  own embedding; ``spk_win_rate``: the fraction of conversions closer to the target than to the
  source;
* ``f0_rmse_cents`` etc. (:func:`comostream.bench.quality.f0_errors`): the output's F0 against the
  source's times the transposition;
* ``dnsmos_ovrl``: DNSMOS P.835 overall, when ``speechmos`` is installed.

``baseline`` (optional) does the same for the shipped singer nearest to ``NAME`` (by voice print):
what the model gave before the voice was added. :func:`resynthesis_check` is the short report
``voice add`` prints: held-out pieces of the voice resynthesised as ``NAME`` and as the nearest
earlier singer.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from tqdm import tqdm

from comostream.bench.quality import (
    EVAL_HINT,
    _convert,
    _cos,
    _dnsmos,
    _Speaker,
    _summary,
    _track,
    f0_errors,
)
from comostream.models.acoustic import AcousticModel
from comostream.models.audio import load_audio
from comostream.models.config import F0Config, RealtimeConfig
from comostream.models.limits import DEFAULT_INDEX_RATE
from comostream.models.voiceprint import closest

__all__ = ["format_voice_table", "resynthesis_check", "run_voice_bench"]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


def _files(folder: Path) -> list[Path]:
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such file or folder")
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    if not found:
        raise FileNotFoundError(f"{folder}: no recordings ({', '.join(AUDIO_EXTENSIONS)})")
    return found


def _median_f0(audio: np.ndarray, cfg: F0Config) -> float | None:
    tr = _track(audio, cfg)
    v = tr.f0_hz[tr.voiced & (tr.f0_hz > 0)]
    return float(np.median(v)) if v.size else None


def _nearest_old(name: str, prints: dict[str, dict]) -> str | None:
    others = {k: v for k, v in prints.items() if k != name and "mcep" in v}
    if name not in prints or not others:
        return None
    return closest(prints[name], others)


def _one(
    model: AcousticModel,
    voc: nn.Module,
    audio: np.ndarray,
    singer: str,
    register_hz: float | None,
    rt: RealtimeConfig,
    f0_cfg: F0Config,
    spk: _Speaker,
    ref_emb: np.ndarray | None,
    index_rate: float = DEFAULT_INDEX_RATE,
) -> dict[str, Any]:
    track = _track(audio, f0_cfg)
    voiced = track.f0_hz[track.voiced & (track.f0_hz > 0)]
    src_med = float(np.median(voiced)) if voiced.size else None
    t = round(12 * math.log2(register_hz / src_med)) if register_hz and src_med else 0
    y = _convert(model, voc, audio, singer, float(t), rt, streaming=False, index_rate=index_rate)
    out = _track(y, f0_cfg)
    emb = spk.embed(y)
    return {
        **f0_errors(track.f0_hz * 2.0 ** (t / 12), track.voiced, out.f0_hz, out.voiced),
        "spk_sim_target": _cos(emb, ref_emb),
        "spk_sim_source": _cos(emb, spk.embed(audio)),
        "dnsmos_ovrl": _dnsmos(y),
        "transpose": float(t),
    }


def run_voice_bench(
    checkpoint: Path,
    name: str,
    refs: Path,
    sources: Sequence[Path] = (),
    *,
    examples: bool = True,
    baseline: bool = False,
    max_sources: int | None = None,
    progress: bool = True,
    index_rate: float = DEFAULT_INDEX_RATE,
) -> dict[str, Any]:
    """Convert every source into ``name`` and measure (see the module docstring); JSON-able.
    ``index_rate``: the retrieval index blend of the conversions (for a model with an index)."""
    from comostream.models.shipped import example_files
    from comostream.realtime.load import load_models, load_voiceprints, read_export

    export = read_export(checkpoint)
    model, voc = load_models(checkpoint, payload=export)
    model.resolve_speaker(name)  # UnknownSpeakerError listing the singers
    prints = load_voiceprints(checkpoint, payload=export)
    mine = prints.get(name, {})
    register = mine.get("f0_median")
    src_files = (example_files() if examples else []) + [f for s in sources for f in _files(s)]
    src_files = src_files[:max_sources] if max_sources else src_files
    if not src_files:
        raise FileNotFoundError("no sources: give --sources DIR (or keep the shipped examples)")
    rt, f0_cfg, spk = model.cfg.realtime, F0Config(), _Speaker()
    ref_embs = [spk.embed(load_audio(f)) for f in _files(refs)]
    ref_emb = None if not ref_embs or ref_embs[0] is None else np.mean(ref_embs, axis=0)
    targets = [name]
    old = _nearest_old(name, prints) if baseline else None
    if old is not None:
        targets.append(old)
    rows: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
    per_source = []
    todo = [(f, t) for f in src_files for t in targets]
    for f, tgt in tqdm(todo, desc="conversions", disable=not progress, file=sys.stderr):
        audio = load_audio(f)
        reg = register if tgt == name else prints.get(tgt, {}).get("f0_median")
        row = _one(model, voc, audio, tgt, reg, rt, f0_cfg, spk, ref_emb, index_rate)
        rows[tgt].append(row)
        if tgt == name:
            per_source.append({"source": str(f), **row})
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "name": name,
        "refs": str(refs),
        "n_refs": len(ref_embs),
        "register_hz": register,
        "index_rate": index_rate,
        "index_size": model.retrieval.sizes().get(name) if model.retrieval is not None else None,
        **_summary(rows[name]),
        "adaptation": mine.get("adaptation"),
        "conversions": per_source,
        "eval_packages": spk.encoder is not None,
    }
    if old is not None:
        result["baseline"] = {"singer": old, **_summary(rows[old])}
    if spk.encoder is None:
        result["note"] = f"speaker similarity / DNSMOS need the eval extra: {EVAL_HINT}"
    return result


def format_voice_table(r: dict[str, Any]) -> str:
    """A Markdown summary of :func:`run_voice_bench`'s result."""

    def f(v: Any, digits: int = 3) -> str:
        return "n/a" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    lines = [
        "| singer | win rate | sim target | sim source | F0 RMSE (cents) | DNSMOS | n |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, s in [(r["name"], r)] + (
        [(r["baseline"]["singer"], r["baseline"])] if "baseline" in r else []
    ):
        lines.append(
            f"| {label} | {f(s.get('spk_win_rate'))} | {f(s.get('spk_sim_target'))} | "
            f"{f(s.get('spk_sim_source'))} | {f(s.get('f0_rmse_cents'), 1)} | "
            f"{f(s.get('dnsmos_ovrl'), 2)} | {s.get('n_conversions')} |"
        )
    ad = r.get("adaptation")
    if ad:
        lines.append(
            f"\nadaptation: {ad.get('seconds')} s on {ad.get('audio_seconds')} s of audio "
            f"({ad.get('steps')} steps)"
        )
    if r.get("note"):
        lines.append(f"\nnote: {r['note']}")
    return "\n".join(lines)


def resynthesis_check(
    model: AcousticModel,
    vocoder: nn.Module,
    name: str,
    heldout: Sequence[np.ndarray],
    voice: Sequence[np.ndarray],
    nearest: str | None,
    max_seconds: float = 20.0,
) -> dict[str, Any]:
    """Held-out pieces ``heldout`` (24 kHz) of the voice resynthesised as ``name`` (no
    transposition): Resemblyzer similarity to the voice (mean embedding of ``voice``, pieces it
    was adapted on) vs that of the same pieces converted into ``nearest`` (the nearest earlier
    singer), and the F0 error in cents. Uses at most ``max_seconds`` of held-out audio."""
    rt, f0_cfg, spk = model.cfg.realtime, F0Config(), _Speaker()
    embs = [spk.embed(a) for a in voice[:8]]
    ref = None if not embs or embs[0] is None else np.mean(embs, axis=0)
    pieces, total = [], 0.0
    for a in heldout:
        if total >= max_seconds:
            break
        pieces.append(a)
        total += a.shape[0] / 24000
    rows: dict[str, list[dict[str, Any]]] = {name: [], nearest or "": []}
    for a in pieces:
        track = _track(a, f0_cfg)
        for singer in [name] + ([nearest] if nearest else []):
            y = _convert(model, vocoder, a, singer, 0.0, rt, streaming=False)
            out = _track(y, f0_cfg)
            rows[singer].append(
                {
                    **f0_errors(track.f0_hz, track.voiced, out.f0_hz, out.voiced),
                    "sim": _cos(spk.embed(y), ref),
                }
            )

    def mean(singer: str, key: str) -> float | None:
        vals = [r[key] for r in rows.get(singer, []) if r[key] is not None]
        return float(np.mean(vals)) if vals else None

    return {
        "seconds": total,
        "sim": mean(name, "sim"),
        "nearest": nearest,
        "sim_nearest": mean(nearest, "sim") if nearest else None,
        "f0_rmse_cents": mean(name, "f0_rmse_cents"),
        "eval_packages": spk.encoder is not None,
    }
