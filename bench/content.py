"""Content-encoder benchmark on HELD-OUT singers (``comostream bench content``).

The encoder was trained on the singers in its checkpoint's ``meta.singers``; every other singer
of the corpus is held out. A model file (``comostream export``, the shipped one) is measured too,
its built-in encoder against the singers of ``--corpus`` that are not among the model's singers
(the recipe trains its encoder on those singers), without the decoder's figure. On the held-out
singers' frames whose loudness is above ``content.active_db`` (dB):

* ``speaker_probe``: a linear singer classifier (logistic regression) trained on frames of the
  ``train``/``valid``-split lines and tested on the ``test``-split lines (other lyrics and
  melodies), on the content frames and, for comparison, on the raw log-mel frames;
  ``chance = 1 / n_held_out``. Low content accuracy = little singer information left. Content
  frames are computed two ways: ``content`` encodes every line on its own (a stream that starts
  with the line: the encoder's input centring starts from its prior), ``content_stream``
  encodes each singer's lines back to back as one stream (a performance: the centring has
  converged on the singer). ``mlp_*``: the same with a one-hidden-layer MLP probe (nonlinear).
  ``pairwise``: the linear probe on every pair of held-out singers alone (chance 0.5), for
  ``content`` and ``mel``: ``mean``, ``min``, ``max`` and the ``most_separated`` pair. Unlike the
  accuracy over all of them, it does not depend on how many singers are held out (with more
  singers, chance falls and so does an accuracy at the same per-pair separability).
  ``timing_floor``: the same on a content with no singer in it, only each rendition's timing
  (a training singer's content of the same line, DTW-aligned; :func:`timing_floor`): what an
  encoder that removed the singer entirely would still score, its timing and voicing being
  the source's (None without a training singer in the corpus).
* ``pitch_probe``: R^2 of a linear (ridge) map from frames to log2 F0 on voiced frames (train
  lines -> test lines), for content and mel: pitch left in the content.
* ``content_kept``: (1) frame-aligned pairs: a synthetic singer rendered from the same base
  TTS voice as a held-out one (``pairs``; a held-out partner if any, else a training singer)
  sings every line with exactly the same phonetic timing, so on each line:
  ``cosine_aligned`` (mean cosine of same-time frames, features standardised) vs
  ``cosine_shifted`` (frames a cyclic shift of >= 25 frames apart: the no-content baseline),
  ``retrieval_at_2`` (fraction of frames whose most similar frame of the partner's rendition
  is within 2 frames) and ``conversion_mel_l1`` (L1, natural-log mel, on test lines, of a
  ridge map fitted on other lines from one singer's features plus the other's F0/voiced/
  loudness to the other's mel, for features ``content``, ``mel`` and ``none``: content kept
  = ``content`` well below ``none``); (2) ``decoder_mel_l1``: the training decoder rebuilding
  held-out singers' test lines from their content (:mod:`comostream.bench.content_recon`).
* ``held_note``: how stable the content of a held note stays (the price of the encoder's
  running centring, which converges on whatever it hears): on held-out test lines, the middle
  voiced frame is held for 4 s (with 0.25 log-mel of noise per bin) after the line's first half;
  mean cosine between the content 50 ms into the hold and 1, 2 and 4 s into it (1.0 = stable).
* ``compute``: seconds of compute per second of audio for the streaming ``step`` with blocks
  of 1 and 4 frames and the one-shot forward, on ``threads`` CPU threads (mel excluded); the
  encoder's size, lookahead and codebook (``codebook_size`` 0: none).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from comostream.bench.content_recon import decoder_reconstruction
from comostream.bench.dtw import dtw_path
from comostream.bench.probes import (
    Standardizer,
    confusion,
    cosine_pairs,
    logreg_predict,
    mlp_accuracy,
    retrieval_hits,
    ridge_fit,
    ridge_predict,
    shuffled_index,
)
from comostream.models.acoustic import INFERENCE_KIND, AcousticModel
from comostream.models.audio import load_audio
from comostream.models.checkpoint_io import CheckpointError, load_checkpoint
from comostream.models.config import Config
from comostream.models.content import CHECKPOINT_KIND, ContentEncoder, load_content_encoder
from comostream.training.corpus import CorpusError, Utterance, load_corpus
from comostream.training.features import EXTRACTORS

__all__ = ["format_content_report", "run_content_bench", "stream_rtf"]

RETRIEVAL_TOLERANCE = 2  # frames
CONFUSION_MAX_SINGERS = 8  # the text report prints the confusion rows up to this many singers
SHIFT_MIN = 25  # frames: the shifted-cosine baseline compares frames at least this apart
RTF_SECONDS = 5.0  # seconds of (random) mel streamed for the compute figure
RTF_BLOCKS = (1, 4)  # frames per streaming step


@dataclass
class _Utt:
    singer: str
    line: int
    split: str
    mel: np.ndarray  # (n_mels, T) natural-log mel
    content: np.ndarray  # (D, T)
    f0: np.ndarray  # (T,) Hz, 0 = unvoiced
    voiced: np.ndarray  # (T,) bool
    loudness: np.ndarray  # (T,) dB
    active: np.ndarray  # (T,) bool: loudness above content.active_db
    content_stream: np.ndarray | None = None  # (D, T): the singer's lines encoded as one stream

    @property
    def cond(self) -> np.ndarray:
        """``(3, T)``: log2(f0 / 200 Hz) on voiced frames, voiced, loudness / 20 dB."""
        v = self.voiced.astype(np.float32)
        log_f0 = np.log2(np.maximum(self.f0, 1.0) / 200.0) * v
        return np.stack([log_f0, v, self.loudness / 20.0]).astype(np.float32)


def _features(enc: ContentEncoder, cfg: Config, utt: Utterance) -> _Utt:
    audio = load_audio(utt.path, cfg.audio.sample_rate)
    a: dict[str, np.ndarray] = {}
    for name in ("mel", "f0", "loudness"):
        a.update(EXTRACTORS[name].fn(audio, utt, cfg))
    where = next(enc.parameters()).device
    with torch.inference_mode():
        content = enc(torch.from_numpy(a["mel"])[None].to(where))[0].cpu().numpy()
    active = a["loudness"] > cfg.content.active_db
    return _Utt(
        utt.singer,
        int(utt.line or 0),
        utt.split,
        a["mel"],
        content,
        a["f0"],
        a["voiced"],
        a["loudness"],
        active,
    )


def stream_content(enc: ContentEncoder, utts: Sequence[_Utt]) -> None:
    """Set ``content_stream`` of ``utts``: each singer's lines (in line order) encoded as one
    stream, back to back."""
    where = next(enc.parameters()).device
    for singer in sorted({u.singer for u in utts}):
        mine = sorted((u for u in utts if u.singer == singer), key=lambda u: u.line)
        mel = torch.from_numpy(np.concatenate([u.mel for u in mine], 1))[None].to(where)
        with torch.inference_mode():
            z = enc(mel)[0].cpu().numpy()
        edges = np.cumsum([0] + [u.mel.shape[1] for u in mine])
        for u, a, b in zip(mine, edges[:-1], edges[1:], strict=True):
            u.content_stream = z[:, a:b]


HOLD_FRAMES = 376  # 4.0 s at 10.67 ms per frame
HOLD_AT = {"1s": 94, "2s": 188, "4s": 375}  # frames into the hold
HOLD_LINES = 12


def held_note(enc: ContentEncoder, utts: Sequence[_Utt], seed: int = 0) -> dict[str, float]:
    """Mean cosine of the content 5 frames into a 4-s held note with 1, 2 and 4 s into it
    (see the module docstring)."""
    rng = np.random.default_rng(seed)
    where = next(enc.parameters()).device
    sims: dict[str, list[float]] = {k: [] for k in HOLD_AT}
    for u in [u for u in utts if u.split == "test"][:HOLD_LINES]:
        frames = np.flatnonzero(u.voiced & u.active)
        if frames.size < 10:
            continue
        f = int(frames[frames.size // 2])
        noise = rng.normal(0.0, 0.25, (u.mel.shape[0], HOLD_FRAMES))
        mel = np.concatenate([u.mel[:, :f], u.mel[:, f : f + 1] + noise], 1).astype(np.float32)
        with torch.inference_mode():
            z = enc(torch.from_numpy(mel)[None].to(where))[0].cpu().numpy()
        ref = z[:, f + 5]
        for key, k in HOLD_AT.items():
            other = z[:, f + k]
            sims[key].append(float(ref @ other / (np.linalg.norm(ref) * np.linalg.norm(other))))
    return {k: float(np.mean(v)) if v else float("nan") for k, v in sims.items()}


def _rows(utts: Sequence[_Utt], kind: str) -> tuple[Tensor, Tensor]:
    """Active frames ``(N, C)`` of ``kind`` ("mel"/"content") and the singer labels ``(N,)``."""
    singers = sorted({u.singer for u in utts})
    x = [torch.from_numpy(getattr(u, kind)[:, u.active].T) for u in utts]
    y = [torch.full((int(u.active.sum()),), singers.index(u.singer)) for u in utts]
    return torch.cat(x), torch.cat(y)


def speaker_probe(utts: Sequence[_Utt], n_singers: int) -> dict[str, Any]:
    """Linear singer classifiers on content and mel frames (train lines -> test lines), with
    their row-normalised confusion matrices (``confusion``: rows the true singer, columns the
    probe's answer, in the order of ``confusion["singers"]``)."""
    train = [u for u in utts if u.split != "test"]
    test = [u for u in utts if u.split == "test"]
    out: dict[str, Any] = {"chance": 1.0 / n_singers}
    kinds = ["content", "mel"] + (["content_stream"] if utts[0].content_stream is not None else [])
    out["confusion"] = {"singers": sorted({u.singer for u in utts})}
    for kind in kinds:
        xtr, ytr = _rows(train, kind)
        xte, yte = _rows(test, kind)
        pred = logreg_predict(xtr, ytr, xte, n_singers)
        out[f"{kind}_accuracy"] = float((pred == yte).float().mean())
        out["confusion"][kind] = confusion(yte, pred, n_singers)
        out[f"mlp_{kind}_accuracy"] = mlp_accuracy(xtr, ytr, xte, yte, n_singers)
        out["train_frames"], out["test_frames"] = int(xtr.shape[0]), int(xte.shape[0])
    out["pairwise"] = {kind: pairwise_probe(utts, kind) for kind in ("content", "mel")}
    return out


def pairwise_probe(utts: Sequence[_Utt], kind: str) -> dict[str, Any]:
    """The linear singer probe on each pair of singers of ``utts`` alone (train lines -> test
    lines, chance 0.5): ``mean``, ``min``, ``max`` accuracy over the pairs, ``pairs`` (their
    number) and the ``most_separated`` pair ``[singer, singer, accuracy]``."""
    singers = sorted({u.singer for u in utts})
    accs: list[tuple[float, str, str]] = []
    for i, a in enumerate(singers):
        for b in singers[i + 1 :]:
            mine = [u for u in utts if u.singer in (a, b)]
            xtr, ytr = _rows([u for u in mine if u.split != "test"], kind)
            xte, yte = _rows([u for u in mine if u.split == "test"], kind)
            pred = logreg_predict(xtr, ytr, xte, 2)
            accs.append((float((pred == yte).float().mean()), a, b))
    values = [a for a, _, _ in accs]
    top = max(accs)
    return {
        "mean": float(np.mean(values)),
        "min": min(values),
        "max": top[0],
        "pairs": len(accs),
        "most_separated": [top[1], top[2], top[0]],
    }


def timing_floor(held: Sequence[_Utt], reference: Sequence[_Utt]) -> dict[str, Any]:
    """:func:`pairwise_probe` on a content with no singer in it, only each rendition's timing.

    Every held-out line's content is replaced by the ``reference`` singer's content of the same
    line (a singer the encoder was trained on), DTW-aligned to it on the content (standardised,
    cosine distance): what a content that kept the held-out singer's timing, voicing and active
    frames but nothing else of them would score. Lines the reference lacks are left out.
    Adds ``reference`` (the singer) to the pairwise fields.
    """
    by_line = {u.line: u for u in reference}
    mine = [u for u in held if u.line in by_line]
    norm = Standardizer(torch.from_numpy(np.concatenate([u.content for u in mine], 1).T))
    floor = []
    for u in mine:
        ref = by_line[u.line]
        a = torch.nn.functional.normalize(norm(torch.from_numpy(u.content.T)), dim=1)
        b = torch.nn.functional.normalize(norm(torch.from_numpy(ref.content.T)), dim=1)
        match = np.zeros(u.content.shape[1], np.int64)
        for i, j in dtw_path((1.0 - a @ b.T).double().numpy()):
            match[i] = j  # the last reference frame matched to frame i
        floor.append(dataclasses.replace(u, content=ref.content[:, match], content_stream=None))
    return {**pairwise_probe(floor, "content"), "reference": reference[0].singer}


def pitch_probe(utts: Sequence[_Utt]) -> dict[str, float]:
    """R^2 of a ridge map from frame features to log2 F0 (voiced active frames; train lines ->
    test lines): pitch left in the content (the acoustic model gets F0 separately)."""

    def rows(split_test: bool, kind: str) -> tuple[Tensor, Tensor]:
        us = [u for u in utts if (u.split == "test") == split_test]
        pairs = [(u, u.active & u.voiced & (u.f0 > 0)) for u in us]
        x = torch.cat([torch.from_numpy(getattr(u, kind)[:, k].T) for u, k in pairs])
        y = torch.cat([torch.from_numpy(np.log2(u.f0[k])[:, None]) for u, k in pairs])
        return x, y.to(x.dtype)

    out = {}
    for kind in ("content", "mel"):
        norm, w = ridge_fit(*rows(False, kind))
        x, y = rows(True, kind)
        mse = (ridge_predict(norm, w, x) - y).square().mean()
        out[f"{kind}_r2"] = float(1.0 - mse / y.var())
    return out


def aligned_partners(corpus: Path, held_out: Sequence[str]) -> dict[str, str]:
    """Held-out singer -> another corpus singer rendered from the same base voice (so every
    line's frames are aligned exactly: same phonetic timing; only register, envelope warp,
    breathiness and vibrato differ). Held-out partners are preferred; singers without one are
    left out. Needs the synthetic corpus's ``corpus.json``."""
    info = corpus / "corpus.json"
    if not info.is_file():
        return {}
    table = json.loads(info.read_text("utf-8")).get("singers", [])
    base = {s["name"]: s.get("base") for s in table if "name" in s}
    out = {}
    for h in held_out:
        same = [n for n in base if n != h and base[n] is not None and base[n] == base.get(h)]
        same.sort(key=lambda n: (n not in held_out, n))
        if same:
            out[h] = same[0]
    return out


def aligned_agreement(
    feats: Sequence[_Utt], partners: dict[str, str], seed: int = 0
) -> dict[str, Any]:
    """Agreement of frame-aligned renditions of the same line by two singers (see docstring)."""
    index = {(u.singer, u.line): u for u in feats}
    pairs = [
        (index[h, line], index[p, line])
        for h, p in partners.items()
        for (s, line) in index
        if s == h and (p, line) in index
    ]
    out: dict[str, Any] = {"pairs": sorted([h, p] for h, p in partners.items())}
    if not pairs:
        return out
    rng = np.random.default_rng(seed)
    for kind in ("content", "mel"):
        norm = Standardizer(_rows([u for pair in pairs for u in pair], kind)[0])
        aligned, shifted, hits, total = [], [], 0, 0
        for a, b in pairs:
            both = a.active & b.active
            fa = norm(torch.from_numpy(getattr(a, kind)[:, both].T))
            fb = norm(torch.from_numpy(getattr(b, kind)[:, both].T))
            aligned.append(cosine_pairs(fa, fb))
            shifted.append(cosine_pairs(fa, fb[shuffled_index(fa.shape[0], rng, SHIFT_MIN)]))
            h, n = retrieval_hits(fa, fb, RETRIEVAL_TOLERANCE)
            hits, total = hits + h, total + n
        out.setdefault("cosine_aligned", {})[kind] = float(torch.cat(aligned).mean())
        out.setdefault("cosine_shifted", {})[kind] = float(torch.cat(shifted).mean())
        out.setdefault("retrieval_at_2", {})[kind] = hits / max(total, 1)
    both_ways = pairs + [(b, a) for a, b in pairs]
    out["conversion_mel_l1"] = {k: _conversion_l1(both_ways, k) for k in ("content", "mel", "none")}
    return out


def _conversion_rows(pairs: Sequence[tuple[_Utt, _Utt]], kind: str) -> tuple[Tensor, Tensor]:
    """``[source features, target conditions] -> target mel`` rows on frames active in both."""
    xs, ys = [], []
    for src, tgt in pairs:
        both = src.active & tgt.active
        parts = [tgt.cond[:, both]] + ([getattr(src, kind)[:, both]] if kind != "none" else [])
        xs.append(torch.from_numpy(np.concatenate(parts).T))
        ys.append(torch.from_numpy(tgt.mel[:, both].T))
    return torch.cat(xs), torch.cat(ys)


def _conversion_l1(pairs: Sequence[tuple[_Utt, _Utt]], kind: str) -> float:
    """Mean L1 (natural-log mel) on test lines of a per-target ridge map fitted on other lines."""
    errs = []
    for target in sorted({t.singer for _, t in pairs}):
        mine = [(s, t) for s, t in pairs if t.singer == target]
        train = [(s, t) for s, t in mine if t.split != "test"]
        test = [(s, t) for s, t in mine if t.split == "test"]
        if not train or not test:
            continue
        norm, w = ridge_fit(*_conversion_rows(train, kind))
        x, y = _conversion_rows(test, kind)
        errs.append((ridge_predict(norm, w, x) - y).abs().mean(1))
    return float(torch.cat(errs).mean()) if errs else float("nan")


def stream_rtf(
    enc: ContentEncoder,
    block: int | None,
    seconds: float = RTF_SECONDS,
    frame_s: float = 256 / 24000,
) -> float:
    """Compute seconds per audio second: streaming ``step`` in ``block``-frame chunks (or the
    one-shot forward for ``None``) over ``seconds`` of random mel."""
    frames = int(seconds / frame_s)
    mel = torch.randn(1, enc.n_mels, frames, generator=torch.Generator().manual_seed(0)) - 5.0
    where = next(enc.parameters()).device
    mel = mel.to(where)
    sync = torch.cuda.synchronize if where.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        if block is None:
            enc(mel[..., :64])  # warm-up
            sync()
            t0 = time.perf_counter()
            enc(mel)
            sync()
            return (time.perf_counter() - t0) / seconds
        state = enc.init_state(1)
        for i in range(0, min(frames, 32 * block), block):  # warm-up
            enc.step(mel[..., i : i + block], state)
        state = enc.init_state(1)
        sync()
        t0 = time.perf_counter()
        for i in range(0, frames, block):
            enc.step(mel[..., i : i + block], state)
        enc.flush(state, 1)
        sync()
        return (time.perf_counter() - t0) / seconds


def _export_encoder(ck: dict[str, Any], path: Path, device: str) -> ContentEncoder:
    """The built-in content encoder of a model file (``comostream export``), in eval mode;
    CheckpointError naming the file when the model has none (a user's HuBERT, say)."""
    enc = AcousticModel.from_payload(ck, str(path)).content_encoder
    if enc is None:
        raise CheckpointError(f"{path}: the model has no built-in content encoder to measure")
    return enc.to(device).eval()


def run_content_bench(
    checkpoint: Path,
    corpus: Path | None,
    cfg: Config,
    threads: int = 1,
    progress: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """All figures of the module docstring as one JSON-able dict (the encoder on ``device``)."""
    ck = load_checkpoint(checkpoint, kind=(CHECKPOINT_KIND, INFERENCE_KIND))
    # the corpus's exact F0 where it has one (it only enters the ridge map's conditions)
    cfg = dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, f0_source="corpus"))
    export = ck["kind"] == INFERENCE_KIND
    if export:  # a model file: its encoder was trained on (at most) the model's singers
        enc, trained, meta = _export_encoder(ck, checkpoint, device), list(ck["speakers"]), {}
    else:
        meta = ck.get("meta", {}) if isinstance(ck.get("meta"), dict) else {}
        trained = [str(s) for s in meta.get("singers", [])]
        enc = load_content_encoder(checkpoint, device)
    if corpus is None and not meta.get("corpus"):
        raise CorpusError(f"{checkpoint} names no corpus; pass the corpus folder (--corpus)")
    corpus = Path(corpus or meta["corpus"])
    all_utts = load_corpus(corpus)
    held_out = sorted({u.singer for u in all_utts} - set(trained))
    if len(held_out) < 2:
        raise CorpusError(
            f"{corpus}: {len(held_out)} singer(s) not seen in training "
            f"({trained}); the benchmark needs >= 2 held-out singers"
        )
    splits = {u.split for u in all_utts if u.singer in held_out}
    if "test" not in splits or len(splits) < 2 or any(u.line is None for u in all_utts):
        raise CorpusError(
            f"{corpus}: needs a parallel corpus with line numbers and "
            "train and test lines (`comostream prep synth`)"
        )
    partners = aligned_partners(corpus, held_out)
    in_corpus = list(dict.fromkeys(u.singer for u in all_utts))
    reference = next((s for s in in_corpus if s in trained), None)  # for the timing floor
    wanted = set(held_out) | set(partners.values()) | ({reference} if reference else set())
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        utts = [u for u in all_utts if u.singer in wanted]
        feats = [
            _features(enc, cfg, u)
            for u in tqdm(
                utts, desc="content bench", unit="utt", file=sys.stderr, disable=not progress
            )
        ]
        held = [f for f in feats if f.singer in held_out]
        stream_content(enc, held)
        probe = speaker_probe(held, len(held_out))
        ref_feats = [f for f in feats if f.singer == reference]
        probe["pairwise"]["timing_floor"] = timing_floor(held, ref_feats) if ref_feats else None
        pitch = pitch_probe(held)
        kept = aligned_agreement(feats, partners)
        kept["decoder_mel_l1"] = None if export else decoder_reconstruction(ck, held)
        kept["held_note"] = held_note(enc, held)
        compute = {f"block_{b}": stream_rtf(enc, b) for b in RTF_BLOCKS}
        compute["one_shot"] = stream_rtf(enc, None)
    finally:
        torch.set_num_threads(old_threads)
    return {
        "checkpoint": str(checkpoint),
        "corpus": str(corpus),
        "step": None if export else int(ck.get("step", 0)),
        "train_singers": trained,
        "held_out_singers": held_out,
        "speaker_probe": probe,
        "pitch_probe": pitch,
        "content_kept": kept,
        "compute": {
            "s_per_audio_s": compute,
            "threads": threads,
            "device": device,
            "parameters": sum(p.numel() for p in enc.parameters()),
            "lookahead_frames": enc.lookahead_frames,
            "lookahead_ms": enc.lookahead_frames * cfg.audio.frame_ms,
            "left_frames": enc.left_frames,
            "content_dim": enc.content_dim,
            "codebook_size": enc.cfg.codebook_size,
            "codebook_temperature": enc.cfg.codebook_temperature,
        },
    }


def _codebook_words(compute: dict[str, Any]) -> str:
    """``", codebook of K codes, temperature T"`` for an encoder with one, else nothing."""
    size = compute.get("codebook_size", 0)
    if not size:
        return ""
    return f", codebook of {size} codes, temperature {compute['codebook_temperature']:g}"


def format_content_report(r: dict[str, Any]) -> str:
    """A short human-readable summary of :func:`run_content_bench`'s result."""
    sp, ck, cp = r["speaker_probe"], r["content_kept"], r["compute"]
    lines = [
        f"held-out singers: {', '.join(r['held_out_singers'])} "
        + ("(a model file's encoder" if r["step"] is None else f"(encoder step {r['step']}")
        + _codebook_words(cp)
        + ")",
        f"singer probe accuracy: content {sp['content_accuracy']:.3f}, mel "
        f"{sp['mel_accuracy']:.3f}, chance {sp['chance']:.3f} ({sp['test_frames']} test frames)",
    ]
    if "content_stream_accuracy" in sp:
        lines.append(
            f"  lines streamed back to back: content {sp['content_stream_accuracy']:.3f}; "
            f"MLP probe: content {sp['mlp_content_accuracy']:.3f}, streamed "
            f"{sp['mlp_content_stream_accuracy']:.3f}, mel {sp['mlp_mel_accuracy']:.3f}"
        )
    pw = sp.get("pairwise")
    if pw is not None:
        c, m = pw["content"], pw["mel"]
        lines.append(
            f"  each pair of singers alone ({c['pairs']} pairs, chance 0.500): content mean "
            f"{c['mean']:.3f} (min {c['min']:.3f}, max {c['max']:.3f}: {c['most_separated'][0]} / "
            f"{c['most_separated'][1]}), mel mean {m['mean']:.3f}"
        )
        floor = pw.get("timing_floor")
        if floor:
            lines.append(
                f"  ... a content with only each rendition's timing (from {floor['reference']}): "
                f"{floor['mean']:.3f}, the floor a singer-free content would score"
            )
    conf = sp.get("confusion")
    if conf is not None and len(conf["singers"]) <= CONFUSION_MAX_SINGERS:
        lines.append("  linear probe on content, fraction of each singer's test frames given to")
        for name, row in zip(conf["singers"], conf["content"], strict=True):
            lines.append(f"    {name}: " + " ".join(f"{v:.2f}" for v in row))
    pp = r["pitch_probe"]
    lines.append(f"log-F0 probe R^2: content {pp['content_r2']:.3f}, mel {pp['mel_r2']:.3f}")
    for key in ("cosine_aligned", "cosine_shifted", "retrieval_at_2", "conversion_mel_l1"):
        if key in ck:
            lines.append(f"{key}: " + ", ".join(f"{k} {v:.3f}" for k, v in ck[key].items()))
    d = ck["decoder_mel_l1"]
    if d is None:
        lines.append("decoder mel L1: n/a (a model file holds no training decoder)")
    else:
        lines.append(
            f"decoder mel L1: own content {d['content']:.3f}, "
            f"shifted content {d['shifted_content']:.3f}"
        )
    if "held_note" in ck:
        lines.append(
            "held note, content cosine to its start: "
            + ", ".join(f"{k} {v:.3f}" for k, v in ck["held_note"].items())
        )
    rtf = ", ".join(f"{k} {v * 1000:.2f} ms/s" for k, v in cp["s_per_audio_s"].items())
    lines.append(f"compute ({cp['threads']} thread): {rtf}; lookahead {cp['lookahead_ms']:.1f} ms")
    return "\n".join(lines)
