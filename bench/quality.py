"""`comostream bench quality`: how good the conversions are, on the corpus's held-out lines.

Every test-split (or ``split``) line of every singer is converted to every other singer (the corpus
is parallel: each line is sung by all singers to the same melody), transposed by ``auto`` (the
whole semitones between the two singers' median F0) or a fixed amount, in three ways: the one-step
target offline, the teacher with N Heun steps offline (when a distillation checkpoint is given),
and the streaming schedule at the default block. Per conversion:

* ``f0_rmse_cents``: RMS cents between the output's F0 (by the realtime default tracker,
  ``[f0] backend``: the one the engine streams with) and the source's F0 times the
  transposition, on frames voiced in both; the source's F0 is the corpus's exact one where it
  has it (``f0_reference``: ``"corpus"``), else the tracker's;
  ``f0_gpe``: fraction of those frames more than 20 % off (gross errors, octave jumps),
  ``f0_gross``: more than 50 cents off, ``f0_octave``: off by a whole number of octaves (within
  50 cents of +-1200 k cents, k != 0; as ``bench f0``), ``f0_fine_rmse_cents``: RMS cents of
  the frames within 20 %; ``vde``: fraction of frames whose voiced flags disagree;
  ``f0_floor``: the same figures of the tracker on the unconverted sources against the corpus's
  F0: what the engine feeds the model, i.e. what an exact conversion would score (the output's
  ``f0_gross`` next to the floor's says whether the model or the vocoder add pitch errors);
  ``f0_resynth_floor``: the same figures of the tracker on a plain harmonic resynthesis
  (:func:`comostream.bench.resynth.harmonic_tone`, model rate and hop) of each conversion's
  requested F0 (the source's F0 times the transposition, voiced frames only) against that F0:
  what a converter that follows the requested pitch exactly scores with this tracker (fast
  glides transposed down cost the tracker more than the untransposed sources of ``f0_floor``);
* ``spk_sim_target`` / ``spk_sim_source``: cosine of the output's Resemblyzer embedding with the
  target's / the source singer's (mean embedding of 4 train-split recordings each);
  ``spk_win_rate``: fraction of conversions closer to the target than to the source;
* ``mcd_db``: mel-cepstral distortion (WORLD-coded CheapTrick envelope, c1-c24) against the target
  singer's own rendition of the line, DTW-aligned, on frames active in both;
* ``gv_ratio``: global variance of the output's log-mel (the variance over time of each bin,
  averaged over bins, active frames) over that of the target singer's own rendition: below 1 the
  output is smoother than the singer (the over-smoothing of statistical synthesis), above 1
  rougher;
* ``dnsmos_ovrl``: DNSMOS P.835 overall (``speechmos``), a naturalness proxy;
  ``dnsmos_target_own``: the same of the target singer's own recordings (the 4 references),
  what a conversion's naturalness is to be compared with; ``dnsmos_target_resynth``: the same
  recordings resynthesised by the built-in vocoder from their own mel and the engine tracker's
  F0 (0 where unvoiced), one-shot: what a perfect acoustic model would score with this vocoder
  (None for a user's windowed vocoder; a vocoder fine-tuned on the model's own mels scores lower
  here than one trained on real mels, and higher on the conversions).

``"conversions"`` lists each conversion of the one-step column: its ``line``, ``source`` and
``target`` singers, ``transpose`` (semitones) and the figures above (which ones miss).

With ``real`` (a ``prep real`` corpus), the real voices' held-out prompts are measured apart,
under ``"real"``: the prompts of the same split (``test`` by default; ``valid`` to choose
settings on material the figures do not use; ``real_lines`` of them, taken in turn from each
voice), each rendition (spoken, and re-sung) converted to ``REAL_TARGETS`` singers of
*another* person, taken in rotation from a fixed list, the singers of the synthetic corpus in name
order (``"target_list"``), so every model with those singers is measured on the same
conversions; a listed singer the model lacks is replaced by one of the model's others (the
recorded voices first, in rotation; ``"off_list_conversions"`` counts them). References of the
targets come from either corpus. These prompts are held out of training by prompt, in every
language, spoken and sung.

Resemblyzer and DNSMOS are evaluation-only packages (``pip install .[eval]``); without them those
figures are null and the report says so.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from comostream.bench.corpus import REAL_LINES
from comostream.bench.dtw import dtw_path
from comostream.bench.resynth import harmonic_tone
from comostream.bench.vocoder import _mcep, frame_db
from comostream.models.acoustic import AcousticModel
from comostream.models.audio import load_audio, resample
from comostream.models.config import AudioConfig, F0Config, RealtimeConfig
from comostream.models.f0 import extract_f0
from comostream.models.f0_track import F0Track
from comostream.models.f0_yin import yin_f0
from comostream.models.limits import DEFAULT_INDEX_RATE
from comostream.models.mel import MelSpectrogram, mel_spectrogram
from comostream.models.samplers import heun_sampler, sampling_sigmas
from comostream.models.vocoder import Vocoder
from comostream.realtime.engine import StreamingConverter, convert_array
from comostream.realtime.geometry import StreamGeometry
from comostream.training.corpus import CorpusError, Utterance, load_corpus

__all__ = [
    "dtw_mcd_db",
    "global_variance",
    "format_quality_table",
    "real_conversions",
    "resynth_errors",
    "resynthesize",
    "run_quality_bench",
]

MODES = ("onestep", "teacher", "streaming")
EVAL_HINT = "pip install .[eval] (resemblyzer, speechmos)"
GROSS_CENTS = 1200.0 * math.log2(1.2)  # a gross pitch error: more than 20 % off (GPE's bound)
TOLERANCE_CENTS = 50.0  # f0_gross / f0_octave: as `comostream bench f0`
ACTIVE_DB = -45.0  # dBFS: frames quieter than this in either signal are left out of the MCD
_MCD_CONST = 10.0 / math.log(10.0) * math.sqrt(2.0)
REAL_TARGETS = 2  # targets per real source rendition


def global_variance(audio: np.ndarray, sr: int = 24000, hop: int = 256) -> float:
    """Mean over mel bins of each bin's variance over time of the log-mel (model settings at
    ``sr`` / ``hop``), on frames above ``ACTIVE_DB``; NaN with fewer than 2 such frames."""
    mel = mel_spectrogram(audio, AudioConfig(sample_rate=sr, hop_length=hop))  # (n_mels, T)
    active = frame_db(audio, mel.shape[1], hop) > ACTIVE_DB
    if active.sum() < 2:
        return float("nan")
    return float(np.mean(np.var(mel[:, active], axis=1)))


def dtw_mcd_db(ref: np.ndarray, est: np.ndarray, sr: int = 24000, hop: int = 256) -> float:
    """MCD (dB) of ``est`` against ``ref`` (any lengths) after DTW alignment of their
    mel-cepstra, over the aligned frame pairs active (> ``ACTIVE_DB``) in both; NaN if none."""
    f_ref, f_est = yin_f0(ref).f0_hz, yin_f0(est).f0_hz
    a, b = _mcep(ref, f_ref, sr, hop), _mcep(est, f_est, sr, hop)
    act_a = frame_db(ref, len(f_ref), hop) > ACTIVE_DB
    act_b = frame_db(est, len(f_est), hop) > ACTIVE_DB
    dist = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))  # (Ta, Tb)
    path = dtw_path(dist)
    pairs = [(i, j) for i, j in path if act_a[i] and act_b[j]]
    if not pairs:
        return float("nan")
    return float(_MCD_CONST * np.mean([dist[i, j] for i, j in pairs]))


class _TeacherSampler(nn.Module):
    """Stands in for the one-step target in an offline engine: N Heun steps of the teacher.

    The offline engine runs ``OFFLINE_STEP_FRAMES`` frames a step on one state; the ODE is solved
    over the whole sequence, so the state keeps every earlier frame's noise and condition and each
    step re-solves from frame 0 and returns its own frames: the same as one step over all frames
    (a step without that history would restart the teacher's causal context at every boundary).
    """

    lookahead_frames = 0

    def __init__(self, teacher: nn.Module, sigmas: Tensor, sigma_max: float) -> None:
        super().__init__()
        self.teacher, self.sigmas, self.sigma_max = teacher, sigmas, sigma_max

    def init_state(self, batch: int, device: Any = None, dtype: Any = None) -> dict:
        return {}

    def step(self, x: Tensor, sigma: Any, cond: Tensor, state: dict) -> tuple[Tensor, dict]:
        """``x (B, n_mels, k)`` = sigma_max * noise, ``cond (B, Cg, k)`` -> ``(B, n_mels, k)``."""
        k = x.shape[-1]
        if "x" in state:
            x, cond = torch.cat([state["x"], x], -1), torch.cat([state["cond"], cond], -1)
        state["x"], state["cond"] = x, cond
        out = heun_sampler(self.teacher, x / self.sigma_max, cond, self.sigmas)
        return out[..., out.shape[-1] - k :], state


def _teacher_model(model: AcousticModel, distill: Path, steps: int | None) -> AcousticModel:
    """A copy of ``model`` whose target is the distillation checkpoint's teacher sampler."""
    import copy

    from comostream.training.acoustic import load_distilled

    cfg, _, models = load_distilled(distill)
    if cfg.model.lookahead_frames != 0:
        raise ValueError("the teacher column needs a model with [model] lookahead_frames = 0")
    out = copy.deepcopy(model)
    out.conditioner.load_state_dict(models["conditioner"].state_dict())
    sigmas = sampling_sigmas(cfg.edm, steps or cfg.edm.teacher_steps)
    teacher = models["teacher"].to(next(model.parameters()).device).eval()
    out.target = _TeacherSampler(teacher, sigmas, cfg.edm.sigma_max)
    return out


class _Speaker:
    """Resemblyzer embeddings (None when the package is missing)."""

    def __init__(self) -> None:
        try:
            from resemblyzer import VoiceEncoder, preprocess_wav
        except ImportError:
            self.encoder = None
            return
        self.encoder = VoiceEncoder(device="cpu", verbose=False)
        self._pre = preprocess_wav

    def embed(self, audio_24k: np.ndarray) -> np.ndarray | None:
        if self.encoder is None:
            return None
        wav = self._pre(resample(audio_24k, 24000, 16000), source_sr=16000)
        return self.encoder.embed_utterance(wav)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _dnsmos(audio_24k: np.ndarray) -> float | None:
    try:
        from speechmos import dnsmos
    except ImportError:
        return None
    x = resample(audio_24k, 24000, 16000)
    x = x / max(1e-6, float(np.abs(x).max()))
    return float(dnsmos.run(x, sr=16000)["ovrl_mos"])


@dataclass
class _Line:
    line: int
    renditions: dict[str, Utterance]  # singer -> utterance


def _test_lines(utts: list[Utterance], split: str, max_lines: int | None) -> list[_Line]:
    by_line: dict[int, dict[str, Utterance]] = {}
    for u in utts:
        if u.split == split and u.line is not None:
            by_line.setdefault(u.line, {})[u.singer] = u
    lines = [_Line(k, v) for k, v in sorted(by_line.items()) if len(v) > 1]
    return lines[:max_lines] if max_lines else lines


@dataclass
class _Reference:
    """A singer's own recordings (``audios``, 24 kHz), summarised: median voiced F0 (Hz) and
    mean Resemblyzer embedding (None without the eval packages); :meth:`dnsmos` on demand."""

    median_hz: float
    embedding: np.ndarray | None
    audios: list[np.ndarray]
    _dnsmos: list[float | None] = field(default_factory=list)
    _resynth: list[float | None] = field(default_factory=list)

    def dnsmos(self) -> float | None:
        """Mean DNSMOS OVRL of the recordings (computed once; None without ``speechmos``)."""
        if not self._dnsmos:
            self._dnsmos.append(_mean_mos(self.audios))
        return self._dnsmos[0]

    def dnsmos_resynth(self, vocoder: nn.Module, cfg: F0Config) -> float | None:
        """Mean DNSMOS OVRL of the recordings resynthesised by ``vocoder`` (the module
        docstring's ``dnsmos_target_resynth``; computed once; None without ``speechmos`` or
        for a vocoder other than the built-in one)."""
        if not self._resynth:
            built_in = isinstance(vocoder, Vocoder)
            audios = [resynthesize(vocoder, a, cfg) for a in self.audios] if built_in else []
            self._resynth.append(_mean_mos(audios))
        return self._resynth[0]


def _mean_mos(audios: list[np.ndarray]) -> float | None:
    """Mean DNSMOS OVRL of ``audios`` (24 kHz); None when none is scored (no ``speechmos``)."""
    mos = [m for m in map(_dnsmos, audios) if m is not None]
    return float(np.mean(mos)) if mos else None


def resynthesize(vocoder: Vocoder, audio: np.ndarray, cfg: F0Config) -> np.ndarray:
    """``audio`` (24 kHz, the model's rate) through ``vocoder`` one-shot from its own log-mel and
    the F0 of ``cfg``'s tracker (0 where unvoiced): ``(T * hop,)`` samples."""
    device = next(vocoder.parameters()).device
    mel = MelSpectrogram(vocoder.audio).to(device)
    with torch.inference_mode():
        m = mel(torch.from_numpy(np.ascontiguousarray(audio, np.float32))[None].to(device))
        track = _track(audio, cfg)
        f0 = np.where(track.voiced, track.f0_hz, 0.0).astype(np.float32)
        frames = min(m.shape[-1], f0.shape[0])
        f0_t = torch.from_numpy(f0[:frames])[None].to(device)
        return vocoder(m[..., :frames], f0_t)[0].float().cpu().numpy()


def _singer_references(
    utts: list[Utterance], singer: str, cfg: F0Config, spk: _Speaker, limit: int = 4
) -> _Reference:
    """The :class:`_Reference` of ``singer``'s first ``limit`` train-split recordings (each
    read and analysed once)."""
    audios = [load_audio(u.path) for u in utts if u.singer == singer and u.split == "train"]
    audios = audios[:limit]
    f0 = np.concatenate([yin_f0(a, cfg).f0_hz for a in audios]) if audios else np.zeros(0)
    voiced = f0[f0 > 0]
    embs = [spk.embed(a) for a in audios]
    emb = None if not embs or embs[0] is None else np.mean(embs, axis=0)
    return _Reference(float(np.median(voiced)) if voiced.size else 200.0, emb, audios)


def _conversions(lines: list[_Line], singers: list[str], limit: int | None) -> Iterator[tuple]:
    n = 0
    for ln in lines:
        for src, utt in sorted(ln.renditions.items()):
            for tgt in singers:
                if tgt == src:
                    continue
                if limit is not None and n >= limit:
                    return
                n += 1
                yield ln, src, utt, tgt


def _source_f0(utt: Utterance, audio: np.ndarray, cfg: F0Config) -> tuple[np.ndarray, np.ndarray]:
    """``(f0 Hz, voiced)`` per frame of the source: the corpus's exact F0 when it has one (the
    synthetic corpus does), else the YIN tracker's."""
    if utt.f0_path is not None and utt.f0_path.is_file():
        f0 = np.load(utt.f0_path).astype(np.float64)
        return f0, f0 > 0
    track = _track(audio, cfg)
    return track.f0_hz, track.voiced


def _track(audio: np.ndarray, cfg: F0Config) -> F0Track:
    """The F0 of 24 kHz ``audio`` by ``cfg.backend`` (the tracker the engine streams with)."""
    return extract_f0(audio, cfg=cfg)


def f0_errors(
    ref_hz: np.ndarray, ref_voiced: np.ndarray, out_hz: np.ndarray, out_voiced: np.ndarray
) -> dict[str, float | None]:
    """F0 figures of one conversion, per frame (the shorter track's length): ``f0_rmse_cents``
    over frames voiced in both (None if none), ``f0_gpe`` the fraction of those more than 20 %
    off (gross pitch errors: octave jumps), ``f0_gross`` more than 50 cents off, ``f0_octave`` a
    whole number of octaves off (+-50 cents), ``f0_fine_rmse_cents`` the RMSE of the frames
    within 20 %, ``vde`` the fraction of frames whose voiced flags disagree."""
    n = min(len(ref_hz), len(out_hz))
    rv, ov = np.asarray(ref_voiced[:n], bool), np.asarray(out_voiced[:n], bool)
    both = rv & ov & (ref_hz[:n] > 0) & (out_hz[:n] > 0)
    out: dict[str, float | None] = {
        "f0_rmse_cents": None,
        "f0_gpe": None,
        "f0_gross": None,
        "f0_octave": None,
        "f0_fine_rmse_cents": None,
        "vde": float(np.mean(rv != ov)) if n else None,
    }
    if both.any():
        cents = 1200.0 * np.log2(out_hz[:n][both] / ref_hz[:n][both])
        gross = np.abs(cents) > GROSS_CENTS
        out["f0_rmse_cents"] = float(np.sqrt(np.mean(cents**2)))
        out["f0_gpe"] = float(np.mean(gross))
        off = np.abs(cents) > TOLERANCE_CENTS
        octaves = np.round(cents / 1200.0)
        near_octave = np.abs(cents - 1200.0 * octaves) <= TOLERANCE_CENTS
        out["f0_gross"] = float(np.mean(off))
        out["f0_octave"] = float(np.mean(off & near_octave & (octaves != 0)))
        out["f0_fine_rmse_cents"] = (
            float(np.sqrt(np.mean(cents[~gross] ** 2))) if (~gross).any() else None
        )
    return out


def resynth_errors(
    src_hz: np.ndarray,
    src_voiced: np.ndarray,
    transpose: float,
    cfg: F0Config,
    sample_rate: int = 24000,
    hop: int = 256,
) -> dict[str, float | None]:
    """:func:`f0_errors` of ``cfg``'s tracker on a harmonic resynthesis of the requested F0,
    ``src_hz (T,)`` times ``transpose`` semitones on ``src_voiced`` frames, against that F0:
    one conversion's share of ``f0_resynth_floor``."""
    want = np.asarray(src_hz, np.float64) * 2.0 ** (transpose / 12)
    y = harmonic_tone(want, src_voiced, sample_rate, hop)
    track = extract_f0(y, sample_rate, cfg=cfg)
    return f0_errors(want, src_voiced, track.f0_hz, track.voiced)


def _cos(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    if a is None or b is None:
        return None
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def _convert(
    model: AcousticModel,
    vocoder: nn.Module,
    audio: np.ndarray,
    speaker: str,
    transpose: float,
    realtime: RealtimeConfig,
    streaming: bool,
    index_rate: float = DEFAULT_INDEX_RATE,
) -> np.ndarray:
    """``audio`` (model rate) converted offline, or streamed in blocks of ``realtime``'s
    (``index_rate``: the retrieval index blend, for a model with an index)."""
    geometry = StreamGeometry.from_configs(model.cfg.audio, realtime)
    chunk = geometry.samples_per_block() if streaming else None
    eng = StreamingConverter.from_models(
        model,
        vocoder,
        speaker=speaker,
        transpose=transpose,
        realtime=realtime,
        offline=not streaming,
        chunk=chunk,
        index_rate=index_rate,
    )
    with torch.inference_mode():
        return convert_array(eng, audio, chunk=chunk)


def _persons(corpus: Path) -> dict[str, str]:
    """``{singer: person}`` from a manifest's ``speaker`` keys (``prep real`` records who
    recorded each voice: ``allison``, ``allison_es`` and their ``_sung`` versions are one
    person); singers without one are their own person."""
    import json

    out: dict[str, str] = {}
    path = Path(corpus) / "manifest.jsonl"
    if path.is_file():
        for raw in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(raw) if raw.strip() else {}
            if isinstance(rec.get("speaker"), str) and isinstance(rec.get("singer"), str):
                out[rec["singer"]] = rec["speaker"]
    return out


def _real_lines(utts: list[Utterance], split: str, max_lines: int | None) -> list[_Line]:
    """The ``split`` prompts of a real corpus (each with its spoken and sung renditions), taken
    in turn from each voice (the lowest singer name of a line's renditions) in line order."""
    by_line: dict[int, dict[str, Utterance]] = {}
    for u in utts:
        if u.split == split and u.line is not None:
            by_line.setdefault(u.line, {})[u.singer] = u
    per_voice: dict[str, list[_Line]] = {}
    for k, v in sorted(by_line.items()):
        per_voice.setdefault(min(v), []).append(_Line(k, v))
    queues = [per_voice[v] for v in sorted(per_voice)]
    lines = [
        q[i] for i in range(max((len(q) for q in queues), default=0)) for q in queues if i < len(q)
    ]
    return lines[:max_lines] if max_lines else lines


def real_conversions(
    lines: list[_Line],
    targets: list[str],
    persons: dict[str, str],
    real_singers: set[str],
    per_source: int = REAL_TARGETS,
    fixed: list[str] | None = None,
) -> list[tuple[_Line, str, Utterance, str]]:
    """``(line, source, utterance, target)`` of the real part: each rendition converted to
    ``per_source`` of ``targets`` (the model's singers) not of the source's person, in rotation
    over the sources so every target gets its turn. The rotation runs through ``fixed`` (those
    of another person) where given, so that models sharing its singers get the same
    conversions; a ``fixed`` singer not in ``targets`` (or already taken for the source), and
    every pick without ``fixed``, comes from ``targets``, the recorded voices
    (``real_singers``) first."""
    out = []
    k = 0
    for ln in lines:
        for src, utt in sorted(ln.renditions.items()):
            me = persons.get(src, src)
            ok = [t for t in targets if persons.get(t, t) != me]
            ok = sorted(ok, key=lambda t: (t not in real_singers, targets.index(t)))
            listed = [t for t in fixed or [] if persons.get(t, t) != me]
            picked: list[str] = []
            for i in range(min(per_source, len(ok))):
                slot = k * per_source + i
                want = listed[slot % len(listed)] if listed else None
                if want not in ok or want in picked:  # the model's rotation, from the slot on
                    turn = [ok[(slot + j) % len(ok)] for j in range(len(ok))]
                    want = next(t for t in turn if t not in picked)
                picked.append(want)
                out.append((ln, src, utt, want))
            k += 1
    return out


@dataclass
class _Bench:
    """What every conversion of a run shares: the models, the vocoder, the engine settings,
    the trackers and the singers' references."""

    models: dict[str, AcousticModel]
    vocoder: nn.Module
    realtime: RealtimeConfig
    f0: F0Config
    speaker: _Speaker
    refs: dict[str, _Reference]
    transpose: str | float
    progress: bool
    sample_rate: int = 24000  # the model's rate and hop: the resynthesis floor's
    hop: int = 256


def _measure(b: _Bench, todo: list[tuple[_Line, str, Utterance, str]]) -> dict[str, Any]:
    """Convert and score ``todo``: a summary per mode, ``f0_floor`` where the sources have
    exact F0, and ``f0_resynth_floor``."""
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in b.models}
    floor: list[dict[str, float | None]] = []
    resynth: list[dict[str, float | None]] = []
    for ln, src, utt, tgt in tqdm(
        todo, desc="conversions", disable=not b.progress, file=sys.stderr
    ):
        audio = load_audio(utt.path)
        t = (
            round(12 * math.log2(b.refs[tgt].median_hz / b.refs[src].median_hz))
            if b.transpose == "auto"
            else float(b.transpose)
        )
        src_f0 = _source_f0(utt, audio, b.f0)
        if utt.f0_path is not None and utt.f0_path.is_file():  # the tracker on the source itself
            own = _track(audio, b.f0)
            floor.append(f0_errors(src_f0[0], src_f0[1], own.f0_hz, own.voiced))
        resynth.append(resynth_errors(*src_f0, t, b.f0, b.sample_rate, b.hop))
        target_ref = ln.renditions.get(tgt)
        ref_audio = load_audio(target_ref.path) if target_ref is not None else None
        for mode, m in b.models.items():
            y = _convert(m, b.vocoder, audio, tgt, t, b.realtime, streaming=mode == "streaming")
            out_f0 = _track(y, b.f0)
            emb = b.speaker.embed(y)
            rows[mode].append(
                {
                    "line": ln.line,
                    "source": src,
                    "target": tgt,
                    "transpose": t,
                    **f0_errors(
                        src_f0[0] * 2.0 ** (t / 12), src_f0[1], out_f0.f0_hz, out_f0.voiced
                    ),
                    "spk_sim_target": _cos(emb, b.refs[tgt].embedding),
                    "spk_sim_source": _cos(emb, b.refs[src].embedding),
                    "mcd_db": dtw_mcd_db(ref_audio, y) if ref_audio is not None else None,
                    "gv_ratio": (
                        global_variance(y) / global_variance(ref_audio)
                        if ref_audio is not None
                        else None
                    ),
                    "dnsmos_ovrl": _dnsmos(y),
                    "dnsmos_target_own": b.refs[tgt].dnsmos(),
                    "dnsmos_target_resynth": b.refs[tgt].dnsmos_resynth(b.vocoder, b.f0),
                }
            )
    result: dict[str, Any] = {m: _summary(rows.get(m, [])) for m in MODES}
    result["conversions"] = rows.get("onestep", [])  # each one: which, and its figures
    if floor:  # what an exact conversion would score: the tracker's own error on the sources
        result["f0_floor"] = {
            k: v for k, v in _summary(floor).items() if k.startswith("f0_") or k == "vde"
        }
    if resynth:  # what an exact pitch-follower would score: the tracker on the requested F0
        result["f0_resynth_floor"] = {
            k: v for k, v in _summary(resynth).items() if k.startswith("f0_") or k == "vde"
        }
    exact = all(u.f0_path is not None and u.f0_path.is_file() for _, _, u, _ in todo)
    result["f0_reference"] = "corpus" if exact else f"{b.f0.backend} (or corpus where given)"
    return result


def _references(b: _Bench, utts: list[Utterance], singers: set[str]) -> None:
    """Add the references of ``singers`` not yet in ``b.refs``, from ``utts``."""
    for s in sorted(singers - set(b.refs)):
        b.refs[s] = _singer_references(utts, s, b.f0, b.speaker)


def _real_part(
    b: _Bench,
    model: AcousticModel,
    real: Path,
    synthetic: list[Utterance],
    max_lines: int | None,
    split: str = "test",
) -> dict[str, Any]:
    """The real voices' held-out prompts of ``split`` (see the module docstring), or
    ``{"skipped": why}``."""
    utts = load_corpus(real)
    lines = _real_lines(utts, split, max_lines)
    own = {u.singer for u in utts}
    pool = utts + synthetic  # the targets' references: from the corpus that has them
    targets = [s for s in model.speakers if s in {u.singer for u in pool}]
    persons = _persons(real)
    fixed = sorted({u.singer for u in synthetic})  # the same for every model: see the docstring
    todo = real_conversions(lines, targets, persons, own, fixed=fixed)
    if not todo:
        return {
            "skipped": f"{real}: no {split}-split prompt, or no singer of the model of another "
            "person to convert it to",
            "corpus": str(real),
        }
    _references(b, pool, {src for _, src, _, _ in todo} | {tgt for *_, tgt in todo})
    result = _measure(b, todo)
    result.update(
        corpus=str(real),
        split=split,
        lines=len(lines),
        sources=len({(ln.line, src) for ln, src, _, _ in todo}),
        singers=sorted({tgt for *_, tgt in todo}),
        target_list=fixed,
        off_list_conversions=sum(tgt not in fixed for *_, tgt in todo),
    )
    return result


def run_quality_bench(
    checkpoint: Path,
    data: Path | None = None,
    corpus: Path | None = None,
    *,
    vocoder: Path | None = None,
    distill: Path | None = None,
    teacher_steps: int | None = None,
    block: int | None = None,
    realtime: RealtimeConfig | None = None,
    transpose: str | float = "auto",
    split: str = "test",
    max_lines: int | None = None,
    max_conversions: int | None = None,
    real: Path | None = None,
    real_lines: int | None = REAL_LINES,
    progress: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Run every conversion and measurement (see the module docstring), the models on
    ``device``; a JSON-able dict. ``realtime``: the engine's settings (default: the model's
    ``[realtime]``); ``block``: frames per step of the streaming schedule, overriding
    ``realtime``'s. The targets are the model's singers that the corpus has (CorpusError when
    none); the sources, every corpus singer's rendition of a held-out line. ``real``: a
    ``prep real`` corpus whose ``real_lines`` held-out prompts are measured apart (``"real"``).
    """
    import json

    from comostream.realtime.load import load_models

    model, voc = load_models(checkpoint, vocoder, device, realtime)
    if corpus is None:
        if data is None:
            raise CorpusError("give --data (the model's feature folder) or --corpus")
        corpus = Path(json.loads((Path(data) / "features.json").read_text())["source"])
    rt = (realtime or model.cfg.realtime).with_block(block)
    utts = load_corpus(corpus)
    sung = {u.singer for u in utts}
    singers = [s for s in model.speakers if s in sung]  # the targets: the model's, in the corpus
    if not singers:
        raise CorpusError(
            f"{corpus}: none of its singers ({', '.join(sorted(sung))}) is a singer of the "
            f"model ({', '.join(model.speakers)}); give --corpus or --data of the model's"
        )
    lines = _test_lines(utts, split, max_lines)
    if not lines:
        raise CorpusError(f"{corpus}: no {split}-split line sung by two or more singers")
    models = {"onestep": model, "streaming": model}
    if distill is not None:
        models["teacher"] = _teacher_model(model, distill, teacher_steps)
    # F0Config(): the engine's tracker (_convert passes no other), the floor's too
    grid = (model.cfg.audio.sample_rate, model.cfg.audio.hop_length)  # the resynthesis's
    b = _Bench(models, voc, rt, F0Config(), _Speaker(), {}, transpose, progress, *grid)
    _references(b, utts, sung)  # every source's register and voice, and every target's
    result = _measure(b, list(_conversions(lines, singers, max_conversions)))
    result.update(
        checkpoint=str(checkpoint),
        vocoder=str(vocoder) if vocoder else None,
        corpus=str(corpus),
        split=split,
        block=rt.block_frames,
        transpose=transpose,
        lines=len(lines),
        singers=singers,
        f0_tracker=b.f0.backend,
        eval_packages=b.speaker.encoder is not None and _has("speechmos"),
    )
    if real is not None:
        result["real"] = _real_part(b, model, Path(real), utts, real_lines, split)
    if not result["eval_packages"]:
        result["note"] = f"speaker similarity / DNSMOS need the eval extra: {EVAL_HINT}"
    return result


_WHICH = ("line", "source", "target", "transpose")  # a conversion's row: which one it is


def _summary(rows: list[dict[str, Any]]) -> dict[str, float | int | None]:
    """Mean of each metric over the conversions (None where unavailable) and the win rate."""
    if not rows:
        return {"n_conversions": 0}

    def mean(key: str) -> float | None:
        vals = [r[key] for r in rows if r[key] is not None and not math.isnan(r[key])]
        return float(np.mean(vals)) if vals else None

    out: dict[str, float | int | None] = {k: mean(k) for k in rows[0] if k not in _WHICH}
    wins = [
        r["spk_sim_target"] > r["spk_sim_source"]
        for r in rows
        if r.get("spk_sim_target") is not None and r.get("spk_sim_source") is not None
    ]
    out["spk_win_rate"] = float(np.mean(wins)) if wins else None
    out["n_conversions"] = len(rows)
    return out


def _table(r: dict[str, Any]) -> list[str]:
    keys = (
        "f0_rmse_cents",
        "f0_gpe",
        "f0_gross",
        "f0_octave",
        "f0_fine_rmse_cents",
        "vde",
        "spk_sim_target",
        "spk_sim_source",
        "spk_win_rate",
        "mcd_db",
        "gv_ratio",
        "dnsmos_ovrl",
        "dnsmos_target_own",
        "dnsmos_target_resynth",
        "n_conversions",
    )
    lines = ["| metric | " + " | ".join(MODES) + " |", "|---|" + "---:|" * len(MODES)]
    for k in keys:
        cells = []
        for m in MODES:
            v = r[m].get(k)
            cells.append("n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines


def _floor_line(r: dict[str, Any], tracker: str) -> list[str]:
    out = []
    if r.get("f0_floor"):
        fl = r["f0_floor"]
        out.append(
            f"F0 reference: {r['f0_reference']}; the tracker ({tracker}) on "
            f"the unconverted sources scores {fl['f0_rmse_cents']:.1f} cents RMSE, GPE "
            f"{fl['f0_gpe']:.3f}, gross (> 50 cents) {fl.get('f0_gross') or 0.0:.4f}, octave "
            f"{fl.get('f0_octave') or 0.0:.4f}, fine {fl['f0_fine_rmse_cents']:.1f} cents (the "
            "floor of this measurement)"
        )
    rs = r.get("f0_resynth_floor")
    if rs and rs.get("f0_gross") is not None:
        out.append(
            f"Resynthesis floor: the tracker ({tracker}) on a harmonic resynthesis of each "
            f"conversion's requested F0 (source F0 x transposition) scores gross "
            f"{rs['f0_gross']:.4f}, octave {rs.get('f0_octave') or 0.0:.4f} (what an exact "
            "pitch-follower would score)"
        )
    return out


def format_quality_table(r: dict[str, Any]) -> str:
    """A Markdown table of :func:`run_quality_bench`'s result (and one of its real part)."""
    tracker = r.get("f0_tracker", "?")
    lines = ["Synthetic held-out lines", "", *_table(r), ""]
    lines.append(
        f"{r['lines']} held-out lines ({r['split']} split) of {r['corpus']}, "
        f"{len(r['singers'])} singers, transposition {r['transpose']}, streaming block "
        f"{r['block']} frames; model {r['checkpoint']}"
    )
    lines += _floor_line(r, tracker)
    real = r.get("real")
    if real is not None and "skipped" in real:
        lines += ["", f"Real held-out sources: skipped ({real['skipped']})"]
    elif real is not None:
        lines += ["", "Real held-out sources", "", *_table(real), ""]
        lines.append(
            f"{real['lines']} held-out prompts ({real['split']} split, by prompt) of "
            f"{real['corpus']}, "
            f"{real['sources']} recordings (spoken and sung) each to {REAL_TARGETS} singers of "
            f"another person, in turn among {', '.join(real['singers'])}"
            + (
                f" ({real['off_list_conversions']} off the fixed list, the model lacking some)"
                if real.get("off_list_conversions")
                else ""
            )
        )
        lines += _floor_line(real, tracker)
    if r.get("note"):
        lines.append(r["note"])
    return "\n".join(lines)
