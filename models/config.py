"""Typed, frozen configuration: one dataclass per component, loaded from TOML.

Defaults live in ``configs/default.toml`` (mirrored by the dataclass defaults below). A user TOML
file overrides any subset of keys; an unknown section or key is an error that names the key and
the file. Every config round-trips through plain dicts, so it can be dumped as JSON into run
directories and checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from comostream.models.limits import check_block_frames, check_noise_scale

__all__ = [
    "AudioConfig",
    "F0Config",
    "CorpusConfig",
    "ModelConfig",
    "EDMConfig",
    "TrainConfig",
    "FeaturesConfig",
    "ContentConfig",
    "RealtimeConfig",
    "VocoderConfig",
    "Config",
    "ConfigError",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_F0_HZ",
    "F0_BACKENDS",
    "STREAMING_F0_BACKENDS",
    "STEP_BACKENDS",
    "ONNX_BACKENDS",
    "BACKEND_CHOICES",
    "load_config",
    "config_from_dict",
    "config_to_dict",
]

DEFAULT_CONFIG_PATH = Path(str(resources.files("comostream.configs") / "default.toml"))
DEFAULT_F0_HZ = 200.0  # Hz: conditioning F0 where no voiced frame gives one (hold, interpolation)
F0_BACKENDS: tuple[str, ...] = (
    "crepe-tiny",
    "crepe-full",
    "harvest",
    "dio",
    "yin",
    "yin-track",
)
STREAMING_F0_BACKENDS: tuple[str, ...] = ("yin", "yin-track")  # the engine can stream these
# what runs the streaming model step (the engine's ``from_models``; onnxruntime: the onnx extra;
# onnxruntime-int8: the same with the matrix products' weights in 8 bits)
STEP_BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "onnxruntime-int8", "inductor")
ONNX_BACKENDS: tuple[str, ...] = ("onnxruntime", "onnxruntime-int8")  # the step exported to ONNX
# ``[realtime] backend``: one of STEP_BACKENDS, or "auto" (RealtimeConfig.backend's comment)
BACKEND_CHOICES: tuple[str, ...] = ("auto", *STEP_BACKENDS)
# ``[realtime] noise_scale``: the default, measured by ``bench quality`` (docs/training.md,
# "Noise scale"); the values accepted: models/limits.py
NOISE_SCALE = 0.5


class ConfigError(ValueError):
    """A configuration file or dict is malformed (unknown key, wrong type, bad value)."""


@dataclass(frozen=True)
class AudioConfig:
    """Audio and frame parameters shared by every feature (README, "Audio and features")."""

    sample_rate: int = 24000  # Hz, the model rate
    n_fft: int = 1024  # samples
    win_length: int = 1024  # samples
    hop_length: int = 256  # samples per frame (10.67 ms at 24 kHz)
    n_mels: int = 100  # mel bins
    fmin: float = 0.0  # Hz, lowest mel edge
    fmax: float = 12000.0  # Hz, highest mel edge
    log_floor: float = 1e-5  # magnitude floor before the natural log

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.hop_length <= 0 or self.n_mels <= 0:
            raise ConfigError("audio: sample_rate, hop_length and n_mels must be positive")
        if self.win_length > self.n_fft:
            raise ConfigError("audio: win_length must not exceed n_fft")
        if self.n_fft % 2 or self.hop_length > self.win_length:
            raise ConfigError("audio: n_fft must be even and hop_length <= win_length")
        if not 0.0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ConfigError("audio: need 0 <= fmin < fmax <= sample_rate / 2")
        if self.log_floor <= 0.0:
            raise ConfigError("audio: log_floor must be positive")

    @property
    def frame_ms(self) -> float:
        """Duration of one frame (one hop) in milliseconds."""
        return 1000.0 * self.hop_length / self.sample_rate


@dataclass(frozen=True)
class F0Config:
    """F0 extraction and post-processing."""

    backend: str = "yin-track"  # one of F0_BACKENDS; chosen by `comostream bench f0`
    fmin: float = 60.0  # Hz, lowest F0 searched
    fmax: float = 1100.0  # Hz, highest F0 searched
    voicing_threshold: float = 0.5  # CREPE periodicity above which a frame is voiced
    silence_db: float = -60.0  # dBFS frame RMS below which every backend says unvoiced
    median_frames: int = 3  # median smoothing window in frames (odd; 1 disables)
    octave_repair: bool = True  # fix isolated octave jumps
    crepe_batch_frames: int = 512  # frames per CREPE forward pass (memory bound)
    yin_threshold: float = 0.05  # yin: mean of the CMNDF dip-threshold prior (pYIN-style)
    yin_voicing: float = 0.4  # yin: voiced when the chosen CMNDF dip (aperiodicity) is below

    def __post_init__(self) -> None:
        if self.backend not in F0_BACKENDS:
            raise ConfigError(
                f"f0: unknown backend {self.backend!r}; valid backends: {', '.join(F0_BACKENDS)}"
            )
        if not 0.0 < self.fmin < self.fmax:
            raise ConfigError("f0: need 0 < fmin < fmax")
        if self.median_frames < 1 or self.median_frames % 2 == 0:
            raise ConfigError("f0: median_frames must be odd and >= 1")
        if not 0.0 <= self.voicing_threshold <= 1.0:
            raise ConfigError("f0: voicing_threshold must be in [0, 1]")
        if not (0.0 < self.yin_threshold < 1.0 and 0.0 < self.yin_voicing <= 1.0):
            raise ConfigError("f0: need 0 < yin_threshold < 1 and 0 < yin_voicing <= 1")


@dataclass(frozen=True)
class CorpusConfig:
    """The synthetic multi-singer singing corpus (``comostream prep synth``)."""

    singers: int = 8  # number of singers (the first rows of training.voices.SINGERS)
    extra_singers: int = 0  # and of training.voices.EXTRA_SINGERS (festival's other people)
    minutes: float = 2.0  # minutes of audio per singer
    seed: int = 0
    valid_fraction: float = 0.1  # fraction of lyric lines (with their melodies) held out for valid
    test_fraction: float = 0.15  # fraction held out for test

    def __post_init__(self) -> None:
        if self.singers < 1 or self.extra_singers < 0:
            raise ConfigError("corpus: singers must be >= 1 and extra_singers >= 0")
        if self.minutes <= 0:
            raise ConfigError("corpus: minutes must be positive")
        if not (0 <= self.valid_fraction < 1 and 0 <= self.test_fraction < 1):
            raise ConfigError("corpus: fractions must be in [0, 1)")
        if self.valid_fraction + self.test_fraction >= 1:
            raise ConfigError("corpus: valid_fraction + test_fraction must be < 1")


@dataclass(frozen=True)
class ModelConfig:
    """Conditioner and denoiser backbone sizes; teacher, student and target share them.

    Presets: ``configs/tiny.toml`` (tests), the defaults here (real time on 2 CPU cores),
    ``configs/large.toml`` (GPUs).
    """

    content_dim: int = 48  # content channels into the conditioner (0: none); = [content]
    speaker_dim: int = 64  # singer embedding size
    cond_channels: int = 128  # per-frame condition channels out of the conditioner
    channels: int = 128  # residual channels of the backbone
    layers: int = 12  # residual layers
    kernel_size: int = 3  # frames
    dilation_cycle: int = 4  # dilations 1, 2, 4, ... 2**(cycle-1), repeated
    lookahead_frames: int = 0  # future frames the whole stack may see (streaming delay)

    def __post_init__(self) -> None:
        for name in ("speaker_dim", "cond_channels", "channels", "layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model: {name} must be >= 1")
        if self.content_dim < 0:
            raise ConfigError("model: content_dim must be >= 0 (0: no content input)")
        if self.kernel_size < 1 or self.dilation_cycle < 1:
            raise ConfigError("model: kernel_size and dilation_cycle must be >= 1")
        if self.lookahead_frames < 0:
            raise ConfigError("model: lookahead_frames must be >= 0")


@dataclass(frozen=True)
class EDMConfig:
    """EDM noise schedule and consistency distillation (Karras et al. 2022; Song et al. 2023)."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    sigma_data: float = 0.5  # std of the normalised mel the model generates
    mel_mean: float = -5.0  # log-mel is normalised as (mel - mean) / std * sigma_data
    mel_std: float = 2.5
    teacher_steps: int = 40  # N for the teacher's Euler/Heun sampler
    distill_steps: int = 18  # N Karras intervals used in distillation
    ema_rate: float = 0.95  # target = EMA of the student per step (Song et al. 2023: 0.95)
    p_mean: float = -1.2  # teacher training: ln(sigma) ~ N(p_mean, p_std^2) (EDM Table 1)
    p_std: float = 1.2
    distill_distance: str = "l2"  # consistency distillation distance: l2 | pseudo_huber

    def __post_init__(self) -> None:
        if not 0.0 < self.sigma_min < self.sigma_max:
            raise ConfigError("edm: need 0 < sigma_min < sigma_max")
        if self.rho <= 0 or self.sigma_data <= 0 or self.mel_std <= 0:
            raise ConfigError("edm: rho, sigma_data and mel_std must be positive")
        if self.teacher_steps < 1 or self.distill_steps < 1:
            raise ConfigError("edm: teacher_steps and distill_steps must be >= 1")
        if not 0.0 <= self.ema_rate < 1.0:
            raise ConfigError("edm: ema_rate must be in [0, 1)")
        if self.p_std <= 0:
            raise ConfigError("edm: p_std must be positive")
        if self.distill_distance not in ("l2", "pseudo_huber"):
            raise ConfigError("edm: distill_distance must be 'l2' or 'pseudo_huber'")


@dataclass(frozen=True)
class TrainConfig:
    """One training loop for every stage (teacher, distill, finetune)."""

    seed: int = 0
    batch_size: int = 16  # segments per step (per process under DDP)
    segment_frames: int = 128  # frames per training segment
    lr: float = 2e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global grad norm (0 disables)
    max_steps: int = 20000
    warmup_steps: int = 200  # linear LR warm-up from lr / warmup_steps to lr
    lr_schedule: str = "constant"  # after warm-up: "constant" or "cosine" (to 0 at max_steps)
    log_every: int = 50  # steps between stats.jsonl / TensorBoard rows
    valid_every: int = 1000  # steps between validations
    ckpt_every: int = 1000  # steps between checkpoints
    # newest ckpt_STEP.pt files kept in the run folder (plus last.pt and best.pt); 0 = keep all
    keep_checkpoints: int = 3
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    num_workers: int = 0  # DataLoader workers

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.segment_frames < 1 or self.max_steps < 0:
            raise ConfigError("train: batch_size and segment_frames must be >= 1, max_steps >= 0")
        if self.lr <= 0:
            raise ConfigError("train: lr must be positive")
        if self.warmup_steps < 0 or self.grad_clip < 0 or self.num_workers < 0:
            raise ConfigError("train: warmup_steps, grad_clip and num_workers must be >= 0")
        if self.keep_checkpoints < 0:
            raise ConfigError("train: keep_checkpoints must be >= 0 (0 = keep every checkpoint)")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ConfigError("train: lr_schedule must be 'constant' or 'cosine'")
        for name in ("log_every", "valid_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train: {name} must be >= 1")


@dataclass(frozen=True)
class FeaturesConfig:
    """Cached per-utterance training features
    (``comostream.training.features.prepare_features``)."""

    extractors: tuple[str, ...] = ("mel", "f0", "loudness")  # names in comostream.training.features
    f0_source: str = "extract"  # "extract": cfg.f0 backend; "corpus": ground-truth F0 if present
    silence_dbfs: float = -60.0  # dBFS: a file whose overall RMS is below this is skipped
    content_checkpoint: str = ""  # "content" extractor: a `train content` checkpoint ("" = none)
    content_perturb: bool = False  # content from a WORLD-perturbed copy (another "singer")
    # content from another singer's rendition of the same line (parallel corpora: the synthetic
    # one), perturbed too if content_perturb; utterances without one keep their own audio
    content_swap: bool = False
    # "content" extractor from a user's HuBERT/ContentVec/Whisper file instead
    # (comostream.models.ext_content; "" = none); model.content_dim must then equal its channels
    # (768 for base, 256 projected)
    content_model: str = ""
    # 1-based transformer layer of content_model; 0 = its final output (= layer 12 of
    # HuBERT/ContentVec base: so-vits-svc 4.1, RVC v2, DDSP-SVC; Whisper: after ln_post)
    content_layer: int = 0
    content_projection: bool = False  # HuBERT final_proj (so-vits-svc 4.0 / RVC v1: layer 9 + proj)

    def __post_init__(self) -> None:
        if self.f0_source not in ("extract", "corpus"):
            raise ConfigError("features: f0_source must be 'extract' or 'corpus'")
        if not self.extractors or len(set(self.extractors)) != len(self.extractors):
            raise ConfigError("features: extractors must be a non-empty list without repeats")
        if self.content_checkpoint and self.content_model:
            raise ConfigError(
                "features: set content_checkpoint (built-in encoder) or "
                "content_model (external), not both"
            )
        if self.content_layer < 0:
            raise ConfigError("features: content_layer must be >= 0 (0 = final output)")


# `comostream train codebook`'s defaults (docs/models.md#content-codebook)
CODEBOOK_SIZE = 128  # codes
CODEBOOK_MAX_FRAMES = 40000  # content frames clustered (a seeded draw of the active train frames)


@dataclass(frozen=True)
class ContentConfig:
    """The built-in streaming content encoder and its training (``comostream train content``).

    Training: the encoder sees a WORLD-perturbed copy of each utterance (pitch shift, formant
    warp, random EQ, breathiness, level); a small decoder conditioned on the ORIGINAL F0,
    loudness and singer must rebuild the original mel; a frame-wise singer classifier is trained
    on the content frames and confused adversarially. With ``centre_tau_frames > 0`` the
    encoder's input (and with ``centre_output`` its content frames) is centred on its own causal
    running mean (:class:`comostream.models.streaming.RunningCentre`): the singer's average
    spectral envelope, the strongest cue of who sings, is removed as the stream goes.
    """

    channels: int = 128  # residual channels of the encoder
    layers: int = 6  # residual layers
    kernel_size: int = 3  # frames
    dilation_cycle: int = 3  # dilations 1, 2, 4, ... 2**(cycle-1), repeated
    lookahead_frames: int = 0  # future frames the encoder sees (its streaming delay)
    content_dim: int = 48  # bottleneck channels (the content features' size)
    l2_normalize: bool = True  # content frames scaled to unit RMS (norm sqrt(content_dim))
    mel_mean: float = -5.0  # input normalisation: (log-mel - mean) / std (fixed, streamable)
    mel_std: float = 2.5
    centre_tau_frames: float = 0.0  # > 0: the input is centred on its causal running mean over
    # active frames (time constant in frames; speaker normalisation), 0 = off
    centre_prior_frames: float = 10.0  # weight (frames) of the prior mean a stream starts from
    centre_active_log_mel: float = -9.0  # frames whose mean log-mel is above this are averaged
    centre_output: bool = False  # also centre the content frames (before the L2 normalisation)
    train_singers: int = 0  # train on the first N singers of the corpus (0 = all)
    perturbations: int = 4  # WORLD-perturbed versions cached per training utterance
    pitch_shift_min: float = 3.0  # semitones: |shift| drawn from [min, max], random sign
    pitch_shift_max: float = 7.0
    formant_alpha_min: float = 0.02  # all-pass envelope warp: |alpha| in [min, max], random sign
    formant_alpha_max: float = 0.12
    formant_jitter: float = 0.0  # > 0: also move 3 formant regions (centres 300 Hz - 5 kHz) on
    # their own, each by up to this fraction of its frequency (perturb.py); 0 = off
    eq_bands: int = 3  # random peaking bands (1 octave wide, centres 150 Hz - 8 kHz)
    eq_db: float = 6.0  # dB: band gains drawn from [-eq_db, eq_db]
    breathiness_max: float = 0.3  # aperiodicity added above ~1 kHz, drawn from [0, max]
    gain_db: float = 6.0  # dB: level change drawn from [-gain_db, gain_db] per segment
    decoder_channels: int = 128  # training-only decoder (non-causal conv stack)
    decoder_layers: int = 6
    speaker_dim: int = 32  # decoder singer embedding size
    adversary_mode: str = "confusion"  # "confusion": encoder pushes the classifier to uniform;
    # "reverse": gradient reversal of the classifier's cross-entropy
    adversary_weight: float = 0.5  # weight of the encoder's adversarial term
    adversary_hidden: int = 128  # hidden units of the frame-wise singer classifier
    active_db: float = -50.0  # dB loudness: frames quieter than this are left out of the adversary
    bottleneck_noise: float = 0.0  # > 0: the training decoder reads the content frames (unit RMS
    # per channel) plus Gaussian noise of this standard deviation, 0 = off (not at inference)
    consistency_weight: float = 0.0  # > 0: two perturbed versions of a segment must give the same
    # content frames (mean squared difference over active frames, this weight)
    codebook_size: int = 0  # > 0: each content frame becomes a soft mix of this many codes fitted
    # on the training singers' frames (`comostream train codebook`), 0 = none
    codebook_temperature: float = 4.0  # the mix's softmax temperature (squared standardised
    # distance); 0 = the nearest code alone

    def __post_init__(self) -> None:
        for name in (
            "channels",
            "layers",
            "kernel_size",
            "dilation_cycle",
            "content_dim",
            "perturbations",
            "decoder_channels",
            "decoder_layers",
            "speaker_dim",
            "adversary_hidden",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"content: {name} must be >= 1")
        if self.codebook_size < 0:
            raise ConfigError("content: codebook_size must be >= 0 (0: no codebook)")
        if not 0 <= self.codebook_temperature < math.inf:
            raise ConfigError("content: codebook_temperature must be finite and >= 0")
        if self.lookahead_frames < 0 or self.train_singers < 0 or self.eq_bands < 0:
            raise ConfigError("content: lookahead_frames, train_singers, eq_bands must be >= 0")
        if self.mel_std <= 0:
            raise ConfigError("content: mel_std must be positive")
        if self.centre_tau_frames < 0 or self.centre_prior_frames <= 0:
            raise ConfigError(
                "content: centre_tau_frames must be >= 0 and centre_prior_frames positive"
            )
        if not 0 <= self.pitch_shift_min <= self.pitch_shift_max:
            raise ConfigError("content: need 0 <= pitch_shift_min <= pitch_shift_max")
        if not 0 <= self.formant_alpha_min <= self.formant_alpha_max < 0.5:
            raise ConfigError("content: need 0 <= formant_alpha_min <= formant_alpha_max < 0.5")
        if min(self.eq_db, self.gain_db, self.adversary_weight, self.consistency_weight) < 0:
            raise ConfigError(
                "content: eq_db, gain_db, adversary_weight and consistency_weight must be >= 0"
            )
        if not 0 <= self.bottleneck_noise < math.inf:
            raise ConfigError("content: bottleneck_noise must be finite and >= 0")
        if not 0 <= self.formant_jitter <= 0.3:
            raise ConfigError("content: formant_jitter must be in [0, 0.3]")
        if not 0 <= self.breathiness_max <= 1:
            raise ConfigError("content: breathiness_max must be in [0, 1]")
        if self.adversary_mode not in ("confusion", "reverse"):
            raise ConfigError("content: adversary_mode must be 'confusion' or 'reverse'")


@dataclass(frozen=True)
class RealtimeConfig:
    """The streaming engine (``comostream.realtime.engine``): block size, noise seed, transitions,
    overload and the window mode used for models that are not streaming-native."""

    block_frames: int = 2  # frames per model step (hop 256 at 24 kHz: 10.67 ms each)
    seed: int = 0  # noise seed of the one-step generator (counter-based: chunking-invariant)
    # the one-step generator's input noise, times sigma_max: 1 = the noise it was distilled on;
    # lower draws closer to the model's average mel, which sounds more natural (DNSMOS) and keeps
    # the timbre as well (docs/training.md, "Noise scale"); 0 = no noise (deterministic)
    noise_scale: float = NOISE_SCALE
    ramp_frames: int = 8  # frames over which a speaker / transposition change is ramped
    max_backlog_ms: float = 200.0  # threaded use: input queued beyond this is dropped, oldest first
    window_context_ms: float = 400.0  # window mode: left context re-run with each block
    window_lookahead_frames: int = 2  # window mode: future frames given to a windowed model
    sola_search_ms: float = 4.0  # window mode: SOLA offset search range
    crossfade_ms: float = 8.0  # window mode: cross-fade length between windows
    # runs the model step: torch (traced on a CPU) | onnxruntime | onnxruntime-int8 (8-bit
    # weights) | inductor | auto: serve's batched steps on onnxruntime-int8 when onnxruntime
    # is installed and the step exports (onnxruntime on a CPU without int8 kernels), else torch; an
    # engine of its own (live, convert, demo, bench latency) on torch, which starts in under a
    # second instead of an export's few seconds (engine_backend, EngineFactory.backend)
    backend: str = "auto"

    def __post_init__(self) -> None:
        try:
            check_block_frames(self.block_frames)
        except ValueError as exc:
            raise ConfigError(f"realtime: block_frames: {exc}") from None
        if self.backend not in BACKEND_CHOICES:
            raise ConfigError(
                f"realtime: backend must be one of {', '.join(BACKEND_CHOICES)}, "
                f"got {self.backend!r}"
            )
        if self.ramp_frames < 1:
            raise ConfigError("realtime: ramp_frames must be >= 1")
        try:
            check_noise_scale(self.noise_scale)
        except ValueError as exc:
            raise ConfigError(f"realtime: {exc}") from None
        if self.window_lookahead_frames < 0:
            raise ConfigError("realtime: window_lookahead_frames must be >= 0")
        if min(self.max_backlog_ms, self.window_context_ms, self.sola_search_ms) < 0:
            raise ConfigError("realtime: max_backlog_ms, window_context_ms, sola_search_ms >= 0")
        if self.crossfade_ms <= 0:
            raise ConfigError("realtime: crossfade_ms must be positive")

    @property
    def engine_backend(self) -> str:
        """What runs an engine's own step (not serve's batched one): ``backend``, torch for
        ``auto``."""
        return "torch" if self.backend == "auto" else self.backend

    def with_block(self, block_frames: int | None) -> RealtimeConfig:
        """These settings with ``block_frames`` frames per model step (None: unchanged)."""
        if block_frames is None:
            return self
        return dataclasses.replace(self, block_frames=block_frames)


@dataclass(frozen=True)
class VocoderConfig:
    """The built-in streaming harmonic-plus-noise vocoder (:mod:`comostream.models.vocoder`) and its
    training (``comostream train vocoder``). Size presets:
    ``comostream.models.vocoder.VOCODER_PRESETS``."""

    channels: int = 128  # residual channels of the frame-rate control network
    layers: int = 6  # residual layers
    kernel_size: int = 3  # frames
    dilation_cycle: int = 3  # dilations 1, 2, 4, repeated
    lookahead_frames: int = 1  # future frames (streaming delay); >= 1: exact frame-centre controls
    n_harmonics: int = 150  # sinusoids per sample (80 Hz x 150 = 12 kHz)
    harmonic_max_hz: float = 11500.0  # Hz: harmonics fade out over the 1 kHz below this
    mel_mean: float = -5.0  # input normalisation: (log-mel - mean) / std
    mel_std: float = 2.5
    noise_init_db: float = -12.0  # dB: initial noise level relative to the mel envelope
    segment_frames: int = 48  # training: scored frames per segment
    context_frames: int = 8  # training: past frames run before each segment, not scored
    stft_ffts: tuple[int, ...] = (512, 1024, 2048)  # multi-resolution STFT loss (hop n_fft / 4)
    stft_weight: float = 1.0  # spectral convergence + log-magnitude L1, averaged over resolutions
    mel_weight: float = 1.0  # natural-log mel L1
    adv_weight: float = 1.0  # LS-GAN generator term (0: no discriminator is run)
    adv_start: int = 2000  # step from which the adversarial and feature-matching terms count
    fm_weight: float = 2.0  # discriminator feature matching (L1)
    disc_periods: tuple[int, ...] = (2, 3, 5, 7, 11)  # multi-period discriminator
    disc_ffts: tuple[int, ...] = (512, 1024, 2048)  # multi-resolution spectrogram discriminator
    disc_channels: int = 16

    def __post_init__(self) -> None:
        for name in (
            "channels",
            "layers",
            "kernel_size",
            "dilation_cycle",
            "n_harmonics",
            "segment_frames",
            "disc_channels",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"vocoder: {name} must be >= 1")
        if self.lookahead_frames < 0 or self.context_frames < 0 or self.adv_start < 0:
            raise ConfigError("vocoder: lookahead_frames, context_frames, adv_start must be >= 0")
        if self.harmonic_max_hz <= 1000.0 or self.mel_std <= 0:
            raise ConfigError("vocoder: harmonic_max_hz must be > 1000 Hz and mel_std positive")
        if min(self.stft_weight, self.mel_weight, self.adv_weight, self.fm_weight) < 0:
            raise ConfigError("vocoder: loss weights must be >= 0")
        if not self.stft_ffts or any(n < 16 or n % 4 for n in (*self.stft_ffts, *self.disc_ffts)):
            raise ConfigError("vocoder: stft_ffts/disc_ffts need sizes >= 16, multiples of 4")
        if any(p < 1 for p in self.disc_periods):
            raise ConfigError("vocoder: disc_periods must be >= 1")


@dataclass(frozen=True)
class Config:
    """The whole configuration, one section per component."""

    audio: AudioConfig = field(default_factory=AudioConfig)
    f0: F0Config = field(default_factory=F0Config)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    edm: EDMConfig = field(default_factory=EDMConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    content: ContentConfig = field(default_factory=ContentConfig)
    realtime: RealtimeConfig = field(default_factory=RealtimeConfig)
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)

    def to_json(self) -> str:
        """The config as pretty JSON (for run directories and checkpoints)."""
        return json.dumps(config_to_dict(self), indent=2, sort_keys=True)


T = TypeVar("T")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A (nested) config dataclass as plain JSON-able dicts."""
    return dataclasses.asdict(cfg)


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` coerced to ``tp`` (int -> float only) or raise ConfigError."""
    origin = typing.get_origin(tp)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_check_type(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _check_type(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not match {tp}")
    return value


def _build(cls: type[T], data: dict[str, Any], where: str, source: str) -> T:
    """Build dataclass ``cls`` from ``data``, recursing into nested dataclasses."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: [{where}] must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(
            f"{source}: unknown config key '{key}' (known in [{where or 'top'}]: "
            f"{', '.join(sorted(names))})"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        tp = hints[name]
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key, source)  # type: ignore[arg-type]
        else:
            try:
                kwargs[name] = _check_type(value, tp, key)
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from None
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    """Build a :class:`Config` from nested dicts (e.g. JSON stored in a checkpoint)."""
    return _build(Config, data, "", source)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load the defaults, then ``path`` (a TOML file) over them, then ``overrides``.

    Raises ConfigError naming the file and key for unknown keys, wrong types or bad values.
    """
    merged = _read_toml(DEFAULT_CONFIG_PATH)
    cfg = config_from_dict(merged, str(DEFAULT_CONFIG_PATH))
    if path is not None:
        user = _read_toml(Path(path))
        _deep_update(merged, user)
        cfg = config_from_dict(merged, str(path))
    if overrides:
        _deep_update(merged, overrides)
        cfg = config_from_dict(merged, "command-line options")
    return cfg


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a TOML config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _deep_update(base: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
