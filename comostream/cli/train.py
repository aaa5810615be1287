"""``comostream train STAGE`` (teacher, distill, finetune, content, codebook, vocoder, recipe),
``export``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from comostream.cli.common import (
    FRAME_MS,
    CommandError,
    Subparsers,
    block_option,
    config_from_args,
    config_option,
    config_options,
    config_parent,
    noise_scale_option,
    positive_int,
    say,
)

__all__ = ["register"]

# [train] fields every stage overrides
TRAIN_OPTIONS = ["max_steps", "batch_size", "lr", "lr_schedule", "seed", "keep_checkpoints"]


def _run_options(args: argparse.Namespace) -> Any:
    from comostream.training.acoustic import RunOptions

    return RunOptions(data=args.data, out=args.out, resume=args.resume, dry_run=args.dry_run)


def _cmd_train_teacher(args: argparse.Namespace) -> int:
    from comostream.training.acoustic import train_teacher

    state = train_teacher(config_from_args(args), _run_options(args))
    say(f"teacher: {state.step} steps; checkpoints in {args.out}/ (last.pt)")
    return 0


def _cmd_train_distill(args: argparse.Namespace) -> int:
    from comostream.training.acoustic import train_distill

    state = train_distill(config_from_args(args), args.teacher, _run_options(args))
    say(
        f"distill: {state.step} steps; checkpoints in {args.out}/ (last.pt); "
        f"export with `comostream export {args.out}/last.pt -o MODEL.ckpt`"
    )
    return 0


def _cmd_train_finetune(args: argparse.Namespace) -> int:
    from comostream.training.acoustic import train_finetune

    state = train_finetune(config_from_args(args), args.init, args.speaker, _run_options(args))
    say(
        f"finetune: {state.step} steps; singer {args.speaker!r} added; "
        f"checkpoints in {args.out}/ (last.pt)"
    )
    return 0


def _cmd_train_content(args: argparse.Namespace) -> int:
    from comostream.training.content import train_content

    path = train_content(
        config_from_args(args), args.data, args.out, dry_run=args.dry_run, resume=args.resume
    )
    say(f"wrote {path}")
    return 0


def _cmd_train_codebook(args: argparse.Namespace) -> int:
    from comostream.training.codebook import fit_codebook

    try:
        path = fit_codebook(
            args.checkpoint,
            args.data,
            args.output,
            size=args.codes,
            temperature=args.temperature,
            seed=args.seed,
            max_frames=args.max_frames,
        )
    except ValueError as exc:  # output = input, too few frames for the codes
        raise CommandError(f"train codebook: {exc}") from None
    say(
        f"wrote {path}: {args.checkpoint} with a codebook of {args.codes} content codes; "
        f"measure it with `comostream bench content --checkpoint {path}`"
    )
    return 0


def _cmd_train_vocoder(args: argparse.Namespace) -> int:
    from comostream.training.vocoder import train_vocoder

    state = train_vocoder(
        config_from_args(args),
        args.data,
        args.out,
        corpus=args.corpus,
        resume=args.resume,
        init=args.init,
        dry_run=args.dry_run,
    )
    say(
        f"vocoder: {state.step} steps; checkpoints in {args.out}/ (last.pt); "
        f"score it with `comostream bench vocoder --checkpoint {args.out}/last.pt`"
    )
    return 0


def _cmd_train_recipe(args: argparse.Namespace) -> int:
    from comostream.training.recipe import run_recipe

    return run_recipe(
        args.run,
        quick=args.quick,
        real=args.real,
        codebook=args.codebook,
        content_dim=args.content_dim,
        gta_steps=args.gta_steps,
        teacher_steps=args.teacher_steps,
    )


def _cmd_export(args: argparse.Namespace) -> int:
    if args.int8 and args.onnx is None:
        raise CommandError("export: --int8 belongs to --onnx OUT.onnx")
    if args.onnx is not None:
        return _export_onnx(args)
    if args.checkpoint is None or args.output is None:
        raise CommandError("export: give CKPT and -o MODEL.ckpt (or --onnx OUT.onnx)")
    from comostream.training.acoustic import export_model

    path = export_model(args.checkpoint, args.output, args.vocoder, args.corpus)
    what = "with the vocoder" if args.vocoder else "no vocoder: pass --vocoder to include one"
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB; target model, {what})")
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    """``export --onnx OUT.onnx [MODEL.ckpt]``: the streaming step of an inference file as ONNX."""
    if args.output is not None or args.vocoder is not None or args.corpus is not None:
        raise CommandError("export --onnx: -o, --vocoder and --corpus belong to a model export")
    if args.onnx.is_dir():
        raise CommandError(f"export --onnx: {args.onnx} is a folder; give a file name (OUT.onnx)")
    import torch

    from comostream.models.chain import ConversionChain
    from comostream.models.shipped import require_model
    from comostream.realtime.load import load_models
    from comostream.realtime.onnx_step import OnnxStep, export_step, write_onnx

    rt = config_from_args(args).realtime
    checkpoint = require_model(args.checkpoint)
    model, voc = load_models(checkpoint, None, "cpu", rt)
    chain = ConversionChain(model, voc, seed=rt.seed, noise_scale=rt.noise_scale).eval()
    with torch.inference_mode():
        data = export_step(chain, rt.block_frames, int8=args.int8)
        OnnxStep(data)  # it loads in ONNX Runtime, before anything is written
    path = write_onnx(data, args.onnx)
    weights = "8-bit matrix weights, " if args.int8 else ""
    say(
        f"wrote {path} ({len(data) / 1e6:.2f} MB; {weights}the streaming step of {checkpoint}: "
        f"{model.cfg.audio.sample_rate} Hz, hop {chain.hop_length}, block {rt.block_frames} "
        f"frames, lookahead {chain.lookahead_frames} frames, {len(model.speakers)} singers; "
        "docs/onnx.md says how to run it)"
    )
    return 0


def _add_acoustic_stages(train_sub: Subparsers) -> None:
    """``train teacher|distill|finetune``: one loop, options from [train]."""
    from comostream.models.config import TrainConfig

    # name: (the one-line help, the description's first sentence, the handler)
    stages = {
        "teacher": (
            "the EDM diffusion teacher (conditioner + denoiser)",
            "Train the EDM diffusion teacher (conditioner + denoiser).",
            _cmd_train_teacher,
        ),
        "distill": (
            "consistency distillation of a teacher: student + EMA target",
            "Distil a teacher into a one-step model by consistency distillation (a student and "
            "its EMA target).",
            _cmd_train_distill,
        ),
        "finetune": (
            "add a singer to a distilled model and learn its embedding",
            "Add a singer to a distilled model and learn its embedding.",
            _cmd_train_finetune,
        ),
    }
    for name, (text, sentence, handler) in stages.items():
        p = train_sub.add_parser(
            name,
            parents=[config_parent],
            help=text,
            description=(
                f"{sentence} Works under torchrun (DDP) too; writes config.json, "
                "stats.jsonl, TensorBoard scalars and checkpoints (ckpt_STEP.pt, last.pt) to "
                "--out."
            ),
        )
        data_help = (
            "features from `comostream prep features`"
            if name != "finetune"
            else "features holding the new singer, or a folder of its recordings"
        )
        p.add_argument("--data", type=Path, required=True, metavar="DIR", help=data_help)
        p.add_argument("--out", type=Path, required=True, metavar="RUN_DIR")
        p.add_argument(
            "--resume",
            type=Path,
            default=None,
            metavar="CKPT",
            help="continue a run exactly from its checkpoint",
        )
        p.add_argument(
            "--dry-run",
            action="store_true",
            help="one step, one validation, one checkpoint, then stop",
        )
        config_options(p, "train", TrainConfig, TRAIN_OPTIONS)
        p.set_defaults(handler=handler)
        if name == "distill":
            p.add_argument("--teacher", type=Path, required=True, metavar="TEACHER_CKPT")
        if name == "finetune":
            p.add_argument(
                "--init",
                type=Path,
                required=True,
                metavar="CKPT",
                help="a distill (or finetune) checkpoint",
            )
            p.add_argument(
                "--speaker",
                required=True,
                metavar="NAME",
                help="the new singer (a singer of FEAT_DIR)",
            )


def _add_content_and_vocoder(train_sub: Subparsers) -> None:
    """``train content|vocoder``: the built-in streaming content encoder and vocoder."""
    from comostream.models.config import ContentConfig, TrainConfig

    p = train_sub.add_parser(
        "content",
        parents=[config_parent],
        help="train the built-in streaming content encoder",
        description=(
            "Train the content encoder on the first --train-singers singers of CORPUS_DIR: it "
            "sees WORLD-perturbed audio (pitch, formants, EQ, breathiness, level), a decoder "
            "told the original F0, loudness and singer rebuilds the original mel, and a singer "
            "classifier is fooled adversarially. Writes RUN_DIR/ckpt_*.pt and last.pt (kind "
            "'content'); perturbed mels are cached under RUN_DIR/perturbed."
        ),
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="CORPUS_DIR",
        help="a corpus (`comostream prep synth` or CORPUS_DIR/<singer>/*.wav)",
    )
    p.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run folder")
    p.add_argument(
        "--dry-run", action="store_true", help="one step, one validation, one checkpoint"
    )
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="CKPT",
        help="continue from a checkpoint of this run",
    )
    config_options(p, "train", TrainConfig, TRAIN_OPTIONS)
    config_options(p, "content", ContentConfig, ["train_singers"])
    for name, text in CONTENT_KNOBS.items():
        config_option(p, "content", ContentConfig, name, help=f"[content] {name}: {text}")
    p.set_defaults(handler=_cmd_train_content)

    _add_codebook(train_sub)

    p = train_sub.add_parser(
        "vocoder",
        parents=[config_parent],
        help="train the built-in streaming harmonic-plus-noise vocoder",
        description=(
            "Train the vocoder on random segments of the train split of FEAT_DIR (ground-truth "
            "mel and F0) against the corpus recordings: multi-resolution STFT + mel L1, plus "
            "an LS-GAN with feature matching from [vocoder] adv_start when adv_weight > 0. "
            "Writes config.json, stats.jsonl and checkpoints (ckpt_STEP.pt, last.pt; kind "
            "'vocoder') to --out."
        ),
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="FEAT_DIR",
        help="features from `comostream prep features`",
    )
    p.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run folder")
    p.add_argument(
        "--corpus",
        type=Path,
        default=None,
        metavar="CORPUS_DIR",
        help="the recordings (default: the corpus FEAT_DIR was made from)",
    )
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="CKPT",
        help="continue a run exactly from its checkpoint",
    )
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="VOCODER",
        help="fine-tune: start from this vocoder's weights (same sizes), fresh "
        "optimisers, step 0; e.g. on `comostream prep gta` features",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="one step, one validation, one checkpoint, then stop"
    )
    config_options(p, "train", TrainConfig, TRAIN_OPTIONS)
    p.set_defaults(handler=_cmd_train_vocoder)


CONTENT_KNOBS = {  # the encoder's bottleneck and perturbation settings, for experiments
    "content_dim": "channels of the content frames, the encoder's bottleneck (config: 48)",
    "bottleneck_noise": "Gaussian noise (std) the training decoder hears on the content frames, "
    "0 = off (config: 0)",
    "formant_jitter": "move 3 formant regions of each perturbed copy on their own by up to this "
    "fraction of their frequency, 0 = off (config: 0)",
}


def _add_codebook(train_sub: Subparsers) -> None:
    """``train codebook``: the content frames as a mix of codes shared by every singer."""
    from comostream.models.config import (
        CODEBOOK_MAX_FRAMES,
        CODEBOOK_SIZE,
        ConfigError,
        ContentConfig,
    )

    def temperature(text: str) -> float:
        try:
            return ContentConfig(codebook_temperature=float(text)).codebook_temperature
        except (ValueError, ConfigError):
            raise argparse.ArgumentTypeError(f"{text!r}: a finite number >= 0") from None

    p = train_sub.add_parser(
        "codebook",
        help="fit a codebook of content codes shared by every singer (less singer in the content)",
        description=(
            "Encode the train-split recordings of CORPUS_DIR by the singers CKPT was trained "
            "on (a `train content` checkpoint, or a model file with its built-in encoder), "
            "cluster their content frames (k-means, seeded) and write CKPT with the codebook "
            "in its encoder to -o: every content frame then becomes a mix of the codes nearest "
            "it, which all singers share, so less of who sings is left in it "
            "(docs/models.md#content-codebook). Fit it on the content checkpoint before "
            "`prep features` so the acoustic model learns on coded content (the recipe does), "
            "or on a model file as it is."
        ),
    )
    p.add_argument(
        "checkpoint",
        type=Path,
        metavar="CKPT",
        help="a `comostream train content` checkpoint or a model file",
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="CORPUS_DIR",
        help="the corpus CKPT was trained on (its train split is used)",
    )
    p.add_argument(
        "-o", "--output", type=Path, required=True, metavar="OUT", help="the file to write"
    )
    p.add_argument(
        "--codes",
        type=positive_int,
        default=CODEBOOK_SIZE,
        metavar="K",
        help=f"number of codes (default {CODEBOOK_SIZE})",
    )
    p.add_argument(
        "--temperature",
        type=temperature,
        default=ContentConfig.codebook_temperature,
        metavar="T",
        help="softmax temperature of the mix, in squared standardised distance (default "
        f"{ContentConfig.codebook_temperature:g}; 0: the nearest code alone)",
    )
    p.add_argument("--seed", type=int, default=0, help="k-means seed (default 0)")
    p.add_argument(
        "--max-frames",
        type=positive_int,
        default=CODEBOOK_MAX_FRAMES,
        metavar="N",
        help=f"cluster at most N active frames, a seeded draw (default {CODEBOOK_MAX_FRAMES})",
    )
    p.set_defaults(handler=_cmd_train_codebook)


def _add_recipe(train_sub: Subparsers) -> None:
    """``train recipe``: the shipped default model from scratch (``make default-model``)."""
    p = train_sub.add_parser(
        "recipe",
        help="the shipped default model's whole recipe, from scratch (resumable)",
        description=(
            "Run the reproducible recipe of the shipped default model as the documented "
            "commands, into RUN_DIR: the synthetic corpus (10 singers x 2 minutes), the real "
            "voices (`prep real --limit 120`, CC-BY-SA 3.0) capped at 4 minutes of train split "
            "per singer and merged with it (`prep merge`), the content "
            "encoder, the training features, the vocoder, the EDM teacher and its consistency "
            "distillation; then the vocoder fine-tuned on the distilled model's own mels (prep "
            "gta), the inference file RUN_DIR/model.ckpt "
            "with that vocoder, and its evaluation (RUN_DIR/quality.json). Every stage is "
            "seeded; a finished stage is skipped and an interrupted training stage resumes from "
            "its last checkpoint, so an interrupted run continues where it stopped (run the same "
            "command again). RUN_DIR/recipe.log gets each command, its wall time and its "
            "output. One stage at a time, each on every core (up to 4): about 1 h 15 min on 2 "
            "cores (docs/training.md). RUN_DIR/recipe.json records the settings below; a folder "
            "resumes only with the same ones."
        ),
    )
    p.add_argument(
        "run",
        nargs="?",
        type=Path,
        default=Path("out/default-model"),
        metavar="RUN_DIR",
        help="run folder (default out/default-model)",
    )
    p.add_argument(
        "--real",
        type=Path,
        default=None,
        metavar="DIR",
        help="reuse this `comostream prep real` folder (e.g. out/real) instead of preparing "
        "RUN_DIR/real; its train split is trained on, its test prompts are what the "
        "evaluation converts",
    )
    p.add_argument(
        "--codebook",
        type=positive_int,
        default=0,
        metavar="K",
        help="fit a codebook of K content codes into the content encoder before the features "
        "(`train codebook`), so the acoustic model learns on coded content "
        "(docs/models.md#content-codebook); default: none, as the shipped model",
    )
    p.add_argument(
        "--content-dim",
        type=positive_int,
        default=0,
        metavar="D",
        help="content channels: the content encoder's bottleneck and the acoustic model's "
        "content input (docs/models.md#a-narrower-bottleneck); default: the configs' 48, "
        "as the shipped model",
    )
    p.add_argument(
        "--gta-steps",
        type=positive_int,
        default=0,
        metavar="N",
        help="steps of the vocoder's fine-tuning on the distilled model's own mels "
        "(docs/models.md#vocoder); default: 8000, as the shipped model",
    )
    p.add_argument(
        "--teacher-steps",
        type=positive_int,
        default=0,
        metavar="N",
        help="train the EDM teacher N steps with its learning rate on a cosine to 0 "
        "(`train teacher --lr-schedule cosine`; docs/training.md#a-longer-teacher); default: "
        "4000 at a constant rate, as the shipped model",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a few steps per stage and a few real utterances per singer, to check the "
        "plumbing in minutes",
    )
    p.set_defaults(handler=_cmd_train_recipe)


def register(sub: Subparsers) -> None:
    """Add ``train`` (with its stages) and ``export`` to ``sub``."""
    train = sub.add_parser(
        "train",
        help="train: acoustic teacher, distill, finetune; content encoder; vocoder; the recipe",
    )
    train_sub = train.add_subparsers(dest="train_command", metavar="STAGE", required=True)
    _add_acoustic_stages(train_sub)
    _add_content_and_vocoder(train_sub)
    _add_recipe(train_sub)

    p = sub.add_parser(
        "export",
        parents=[config_parent],
        help="write the inference file of a distilled model (target only), or its streaming "
        "step as ONNX",
        description=(
            "Keep only what inference runs: the conditioner, the EMA target denoiser, the "
            "singer table and the config (no student, teacher or optimiser state). With --onnx, "
            "write instead the streaming model step of an inference file (CKPT; default: the "
            "shipped model) as ONNX, state in and state out, for ONNX Runtime hosts (C++, Rust, "
            "the browser; docs/onnx.md); needs the onnx extra."
        ),
    )
    p.add_argument(
        "checkpoint",
        type=Path,
        nargs="?",
        default=None,
        metavar="CKPT",
        help="a distill or finetune training checkpoint (RUN_DIR/last.pt); with --onnx, an "
        "inference file (default: the shipped model)",
    )
    p.add_argument("-o", "--output", type=Path, default=None, metavar="MODEL.ckpt")
    p.add_argument(
        "--onnx",
        type=Path,
        default=None,
        metavar="OUT.onnx",
        help="write the streaming step as ONNX (written atomically)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="with --onnx: the matrix products' weights in 8 bits (ONNX Runtime's MatMulNBits; "
        "a quarter of the size, 20-30%% faster at small batches, output within about 30 dB SNR "
        "of the float step; what --backend onnxruntime-int8 runs; docs/onnx.md)",
    )
    block_option(p, f"with --onnx: frames per step the file is meant for ({FRAME_MS}; any runs)")
    noise_scale_option(
        p,
        "with --onnx: the one-step model's input noise baked into the step, 0-2 "
        "(docs/training.md, noise scale); default: [realtime] noise_scale",
    )
    p.add_argument(
        "--vocoder",
        type=Path,
        default=None,
        metavar="VOC.ckpt",
        help="a `comostream train vocoder` checkpoint to store in the file",
    )
    p.add_argument(
        "--corpus",
        type=Path,
        default=None,
        metavar="DIR",
        help="the training corpus: store the singers' voice prints (for the demo)",
    )
    p.set_defaults(handler=_cmd_export)
