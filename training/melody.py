"""Lyrics bank, seeded melodies and the sung F0 contour (vibrato, portamento, drift).

Every line ``i`` of a corpus gets its own lyric and its own melody, both drawn from RNGs seeded by
``(seed, i)`` only, so line ``i`` is the same whatever the corpus size. Melodies are stored as
semitone offsets from the key tonic; a singer's register fixes the octave (see ``voices.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Line",
    "Melody",
    "f0_contour",
    "make_line",
    "make_lines",
    "make_lyric",
    "make_melody",
]

_LYRIC_TAG = 0x4C59  # RNG stream tags, so lyrics and melodies draw from independent streams
_MELODY_TAG = 0x4D45

_DET = ["the", "a", "my", "your", "our", "this", "that"]
_ADJ = [
    "quiet",
    "golden",
    "silver",
    "lonely",
    "gentle",
    "bright",
    "distant",
    "tender",
    "falling",
    "endless",
    "early",
    "hollow",
    "crimson",
    "wild",
    "sleeping",
    "open",
    "weary",
    "shining",
]
_NOUN = [
    "river",
    "morning",
    "mountain",
    "harbor",
    "window",
    "garden",
    "evening",
    "shadow",
    "candle",
    "meadow",
    "ocean",
    "valley",
    "lantern",
    "feather",
    "season",
    "sparrow",
    "heart",
    "road",
    "song",
    "moon",
    "sky",
    "rain",
    "field",
    "star",
    "wind",
    "light",
    "snow",
    "shore",
]
_VERB = [
    "sings",
    "waits",
    "turns",
    "falls",
    "dreams",
    "calls",
    "shines",
    "wanders",
    "listens",
    "lingers",
    "rises",
    "returns",
    "whispers",
    "carries",
    "follows",
    "remembers",
]
_PREP = ["over", "under", "across", "beyond", "beneath", "into", "along", "toward", "upon"]
_ADV = ["softly", "slowly", "again", "tonight", "forever", "alone", "once more", "so far"]
_CONJ = ["and", "while", "until", "as"]

_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)

LEAD_IN_S = 0.30  # seconds of silence/consonant before the first note
TAIL_S = 0.35  # seconds after the last note


@dataclass(frozen=True)
class Melody:
    """A melody: notes as (semitones above the key tonic, seconds), plus expression parameters."""

    id: str
    key: int  # semitones added to the singer's register tonic (-2..2)
    mode: str  # "major" | "minor"
    tempo: float  # beats per minute
    notes: tuple[tuple[int, float], ...]  # (semitones, seconds)
    beats: tuple[float, ...]  # note lengths in beats
    glide_s: float  # portamento duration between notes, seconds
    vibrato_hz: float  # vibrato rate, Hz
    vibrato_cents: float  # vibrato depth (peak deviation), cents
    vibrato_delay_s: float  # vibrato onset delay after a note starts, seconds
    lead_in_s: float = LEAD_IN_S
    tail_s: float = TAIL_S

    @property
    def notes_seconds(self) -> float:
        """Duration of the notes alone, seconds."""
        return float(sum(d for _, d in self.notes))

    @property
    def seconds(self) -> float:
        """Total duration including lead-in and tail, seconds."""
        return self.lead_in_s + self.notes_seconds + self.tail_s

    def onsets(self) -> np.ndarray:
        """Note onset times in seconds, plus the end of the last note (length ``len(notes)+1``)."""
        durs = np.array([d for _, d in self.notes], dtype=np.float64)
        return self.lead_in_s + np.concatenate([[0.0], np.cumsum(durs)])

    def n_frames(self, sample_rate: int, hop: int) -> int:
        """Frames T of the rendered audio: N = (T-1)*hop samples, so T = N // hop + 1."""
        return int(round(self.seconds * sample_rate / hop)) + 1


@dataclass(frozen=True)
class Line:
    """One lyric line with its own melody."""

    index: int
    text: str
    melody: Melody


def _rng(seed: int, tag: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, tag, index]))


def make_lyric(rng: np.random.Generator) -> str:
    """A 6-12 word English line from a tiny grammar (noun phrase, verb, prepositional phrases)."""

    def pick(words: list[str]) -> str:
        return words[int(rng.integers(len(words)))]

    def np_(adj: bool) -> list[str]:
        return [pick(_DET)] + ([pick(_ADJ)] if adj else []) + [pick(_NOUN)]

    while True:
        words = np_(rng.random() < 0.7) + [pick(_VERB)]
        if rng.random() < 0.4:
            words.append(pick(_ADV))
        words += [pick(_PREP)] + np_(rng.random() < 0.6)
        if rng.random() < 0.5:
            words += [pick(_CONJ)] + np_(rng.random() < 0.5) + [pick(_VERB)]
        n = sum(len(w.split()) for w in words)
        if 6 <= n <= 12:
            return " ".join(words)


def make_melody(seed: int, index: int, n_words: int) -> Melody:
    """A seeded melody for line ``index``: 5-12 notes in a major/minor key, 2.8-5.2 s of notes."""
    rng = _rng(seed, _MELODY_TAG, index)
    mode = "major" if rng.random() < 0.6 else "minor"
    scale = _MAJOR if mode == "major" else _MINOR
    n = int(np.clip(n_words + int(rng.integers(-1, 2)), 5, 12))
    degree = int(rng.choice([0, 2, 4]))
    degrees = [degree]
    for _ in range(n - 1):
        step = int(rng.choice([-2, -1, -1, 1, 1, 2, 0, 3, -3]))
        degree = int(np.clip(degree + step, -2, 7))
        degrees.append(degree)
    degrees[-1] = int(rng.choice([0, 4, 7])) if abs(degrees[-2]) < 5 else 4
    semis = [12 * (d // 7) + scale[d % 7] for d in degrees]
    beats = [float(rng.choice([0.5, 0.5, 1.0, 1.0, 1.0, 1.5])) for _ in range(n - 1)]
    beats.append(float(rng.choice([1.5, 2.0, 2.5])))
    tempo = float(rng.uniform(96.0, 150.0))
    notes_s = sum(beats) * 60.0 / tempo
    if not 2.8 <= notes_s <= 5.2:  # keep lines 3.4-5.9 s long: rescale the tempo
        tempo = sum(beats) * 60.0 / float(np.clip(notes_s, 2.8, 5.2))
    tempo = round(tempo, 3)
    notes = tuple((s, round(b * 60.0 / tempo, 6)) for s, b in zip(semis, beats, strict=True))
    return Melody(
        id=f"s{seed}-m{index:04d}",
        key=int(rng.integers(-2, 3)),
        mode=mode,
        tempo=tempo,
        notes=notes,
        beats=tuple(beats),
        glide_s=round(float(rng.uniform(0.05, 0.12)), 4),
        vibrato_hz=round(float(rng.uniform(5.0, 6.0)), 4),
        vibrato_cents=round(float(rng.uniform(20.0, 50.0)), 3),
        vibrato_delay_s=round(float(rng.uniform(0.15, 0.35)), 4),
    )


def make_line(seed: int, index: int) -> Line:
    """Line ``index`` of the corpus for ``seed``: lyric plus melody."""
    text = make_lyric(_rng(seed, _LYRIC_TAG, index))
    return Line(index, text, make_melody(seed, index, len(text.split())))


def make_lines(
    seed: int,
    total_seconds: float,
    sample_rate: int = 24000,
    hop: int = 256,
    max_lines: int | None = None,
) -> list[Line]:
    """Lines until their rendered durations (seconds) reach ``total_seconds`` (or ``max_lines``)."""
    lines: list[Line] = []
    total = 0.0
    while total < total_seconds and (max_lines is None or len(lines) < max_lines):
        line = make_line(seed, len(lines))
        lines.append(line)
        total += (line.melody.n_frames(sample_rate, hop) - 1) * hop / sample_rate
    return lines


def f0_contour(
    melody: Melody,
    tonic_midi: float,
    n_frames: int,
    frame_s: float,
    vibrato_scale: float = 1.0,
) -> np.ndarray:
    """Continuous sung F0 in Hz (float64) at frame times ``t * frame_s``, for every frame.

    MIDI pitch = ``tonic_midi + key + note`` with raised-cosine portamento of ``glide_s`` centred
    on each onset, delayed sinusoidal vibrato (depth in cents, scaled by ``vibrato_scale`` and
    clipped to 20-50 cents) and a slow +-6 cent drift. Voicing is applied by the caller.
    """
    t = np.arange(n_frames, dtype=np.float64) * frame_s
    on = melody.onsets()
    pitch = np.array([p for p, _ in melody.notes], dtype=np.float64)
    midi = np.full(n_frames, pitch[0])
    g = melody.glide_s
    for j in range(1, len(pitch)):
        u = np.clip((t - (on[j] - 0.5 * g)) / g, 0.0, 1.0)
        midi += (pitch[j] - pitch[j - 1]) * 0.5 * (1.0 - np.cos(np.pi * u))
    depth = float(np.clip(melody.vibrato_cents * vibrato_scale, 20.0, 50.0))
    cents = np.zeros(n_frames)
    ends = on[1:].copy()
    ends[-1] = t[-1] + frame_s  # the last note's vibrato runs through the tail
    for j in range(len(pitch)):
        start = on[j] + melody.vibrato_delay_s
        if ends[j] - start < 0.2:
            continue
        m = (t >= start) & (t < ends[j])
        tau = t[m] - start
        env = np.minimum(1.0, tau / 0.2) * np.minimum(1.0, (ends[j] - t[m]) / 0.06)
        cents[m] += depth * env * np.sin(2.0 * np.pi * melody.vibrato_hz * tau)
    phase = (sum(ord(c) for c in melody.id) % 97) / 97.0 * 2.0 * np.pi
    cents += 6.0 * np.sin(2.0 * np.pi * 0.7 * t + phase) * np.sin(2.0 * np.pi * 0.23 * t + 1.0)
    midi += tonic_midi + melody.key + cents / 100.0
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)
