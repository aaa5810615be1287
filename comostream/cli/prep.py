"""``comostream prep synth|real|merge|features|gta``: the corpora and training features."""

from __future__ import annotations

import argparse
from pathlib import Path

from comostream.cli.common import (
    Subparsers,
    config_from_args,
    config_option,
    config_options,
    config_parent,
    runtime_options,
    use_runtime,
)

__all__ = ["register"]


def _cmd_prep_synth(args: argparse.Namespace) -> int:
    from comostream.training.synth import synthesize_corpus

    cfg = config_from_args(args)
    manifest = synthesize_corpus(args.out_dir, cfg.corpus, cfg.audio, jobs=args.jobs)
    print(f"wrote {manifest}")
    return 0


def _cmd_prep_real(args: argparse.Namespace) -> int:
    from comostream.cli.common import CommandError
    from comostream.training.asterisk import resolve_voices
    from comostream.training.debs import PackageError
    from comostream.training.real import prepare_real_corpus, summary

    fractions = (args.valid_fraction, args.test_fraction)
    if not all(0 <= f < 1 for f in fractions) or sum(fractions) >= 1:
        raise CommandError("--valid-fraction and --test-fraction must be in [0, 1), sum < 1")
    if args.limit is not None and args.limit < 1:
        raise CommandError(f"--limit must be >= 1 (got {args.limit})")
    try:
        manifest = prepare_real_corpus(
            args.out_dir,
            resolve_voices(args.voices.split(",") if args.voices else None),
            seed=args.seed,
            valid_fraction=args.valid_fraction,
            test_fraction=args.test_fraction,
            limit=args.limit,
            sung=not args.no_sung,
            cache_dir=args.cache_dir,
        )
    except PackageError as exc:
        raise CommandError(str(exc)) from None
    print(summary(manifest))
    print(f"wrote {manifest}")
    return 0


def _cmd_prep_merge(args: argparse.Namespace) -> int:
    from comostream.cli.common import CommandError
    from comostream.training.merge import merge_corpora
    from comostream.training.real import summary

    if args.max_minutes is not None and args.max_minutes <= 0:
        raise CommandError(f"--max-minutes must be > 0 (got {args.max_minutes})")
    manifest = merge_corpora(args.out_dir, args.corpora, args.max_minutes)
    print(summary(manifest))
    print(f"wrote {manifest}")
    return 0


def _cmd_prep_features(args: argparse.Namespace) -> int:
    from comostream.training.features import prepare_features

    index = prepare_features(args.data_dir, args.feat_dir, config_from_args(args), force=args.force)
    print(index.summary())
    return 0


def _cmd_prep_gta(args: argparse.Namespace) -> int:
    from comostream.models.acoustic import AcousticModel
    from comostream.training.vocoder_gta import write_gta_features

    device = use_runtime(args)
    model = AcousticModel.from_checkpoint(args.model, device)
    out = write_gta_features(model, args.data, args.out, model_name=str(args.model))
    print(
        f"wrote {out} (GTA mels of {args.model}); fine-tune with `comostream train vocoder "
        f"--data {out} --init VOCODER`"
    )
    return 0


def register(sub: Subparsers) -> None:
    """Add ``prep`` (synth, real, merge, features, gta) to ``sub``."""
    from comostream.models.config import CorpusConfig, F0Config, FeaturesConfig

    prep = sub.add_parser("prep", help="prepare data: the synthetic corpus, training features")
    prep_sub = prep.add_subparsers(dest="prep_command", metavar="WHAT", required=True)
    p = prep_sub.add_parser(
        "synth",
        parents=[config_parent],
        help="synthesise a parallel multi-singer singing corpus with exact F0",
        description=(
            "Render every lyric line on its melody with every singer (flite, espeak-ng and "
            "festival voices re-sung with WORLD). Writes OUT_DIR/<singer>/<utt>.wav (24 kHz "
            "mono), <utt>.f0.npy (Hz per 256-sample frame, 0 = unvoiced) and manifest.jsonl."
        ),
    )
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    config_option(
        p,
        "corpus",
        CorpusConfig,
        "singers",
        metavar="N",
        help="the first N singers of the table (1-14, docs/training.md); default: [corpus] singers",
    )
    config_option(
        p,
        "corpus",
        CorpusConfig,
        "extra_singers",
        metavar="E",
        help="and the first E of the 11 extra singers, recorded people of festival's other "
        "voices (the last 3 are kept for measuring); default: [corpus] extra_singers (0)",
    )
    config_options(p, "corpus", CorpusConfig, ["minutes", "seed"])
    p.add_argument("--jobs", type=int, default=1, help="parallel worker processes (default 1)")
    p.set_defaults(handler=_cmd_prep_synth)

    _register_real(prep_sub)

    p = prep_sub.add_parser(
        "merge",
        help="see several corpora as one (e.g. the synthetic corpus and the real voices)",
        description=(
            "Write OUT_DIR/manifest.jsonl listing the utterances of every CORPUS (a `prep "
            "synth` or `prep real` folder, or CORPUS/<singer>/*.wav) with paths relative to "
            "OUT_DIR (nothing is copied: the corpora must stay where they are), and "
            "OUT_DIR/corpus.json (sources, licences, minutes kept per singer). Singers, splits, "
            "F0 files and lyric lines are kept as they are; two corpora may not share a singer "
            "name or a line number. --max-minutes M keeps each singer's first utterances "
            "(manifest order, all splits) up to M minutes of train split, so the real voices "
            "can be capped to the synthetic corpus's size. Rerunning rewrites the manifest."
        ),
    )
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("corpora", type=Path, nargs="+", metavar="CORPUS")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        metavar="M",
        help="at most M minutes of train split per singer (default: everything)",
    )
    p.set_defaults(handler=_cmd_prep_merge)

    p = prep_sub.add_parser(
        "features",
        parents=[config_parent],
        help="cache mel, F0 and loudness of every utterance of a corpus for training",
        description=(
            "Compute frame-aligned features of every utterance of DATA_DIR (a synthetic corpus "
            "or DATA_DIR/<singer>/*.wav) into FEAT_DIR/<singer>/<utt>.npz plus index.jsonl and "
            "features.json. Unreadable or silent files are skipped and listed in skipped.jsonl; "
            "utterances already done are skipped unless --force."
        ),
    )
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR")
    p.add_argument("feat_dir", type=Path, metavar="FEAT_DIR")
    p.add_argument("--force", action="store_true", help="recompute every utterance")
    config_options(p, "f0", F0Config, ["backend"])
    config_options(p, "features", FeaturesConfig, ["f0_source"])
    p.set_defaults(handler=_cmd_prep_features)

    p = prep_sub.add_parser(
        "gta",
        help="the model's own (ground-truth-aligned) mels, to fine-tune the vocoder on",
        description=(
            "Copy FEAT_DIR into OUT_DIR with every utterance's mel replaced by the one-step "
            "target's output from that utterance's own features and singer (the realtime "
            "path's noise), frame-aligned with the recording. Fine-tuning the vocoder on them "
            "(`comostream train vocoder --data OUT_DIR --init VOCODER`) teaches it to render "
            "the model's smoother mels as clean singing. Utterances already written are kept."
        ),
    )
    p.add_argument(
        "model", type=Path, metavar="MODEL", help="an inference file (`comostream export`)"
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="FEAT_DIR",
        help="the features the model was trained on",
    )
    p.add_argument("--out", type=Path, required=True, metavar="OUT_DIR")
    runtime_options(p)
    p.set_defaults(handler=_cmd_prep_gta)


def _register_real(prep_sub: Subparsers) -> None:
    from comostream.models.config import CorpusConfig
    from comostream.training.asterisk import REAL_VOICES

    defaults = CorpusConfig()
    voices = ", ".join(f"{v.name} ({v.package}, {v.speaker})" for v in REAL_VOICES)
    p = prep_sub.add_parser(
        "real",
        help="real recorded voices (Debian's Asterisk prompts, CC-BY-SA 3.0), spoken and sung",
        description=(
            "Fetch the Asterisk prompt packages with `apt-get download` (into --cache-dir, only "
            "when missing; nothing is installed), decode their G.722 prompts, trim silence, drop "
            "tones and too-short or silent files, and write OUT_DIR/<voice>/*.wav (24 kHz mono) "
            "plus each prompt re-sung with WORLD on a corpus melody as OUT_DIR/<voice>_sung/ "
            "with its exact F0 (<utt>.f0.npy), manifest.jsonl (licence, package, version, "
            "original file, speaker, split) and corpus.json. Voices: " + voices + ". "
            "asterisk-core-sounds-it-*, -ru-* and asterisk-prompt-* are refused (kept for "
            "evaluation). Deterministic for a seed; files already written are kept, so a rerun "
            "resumes. About 80 minutes of speech in all."
        ),
    )
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument(
        "--voices",
        metavar="NAMES",
        help="comma-separated voices or package names (default: all)",
    )
    p.add_argument(
        "--limit", type=int, metavar="N", help="at most N prompts per voice (default: all)"
    )
    p.add_argument("--no-sung", action="store_true", help="write only the spoken voices")
    p.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="where the .deb files are kept or downloaded to (default OUT_DIR/.debs)",
    )
    p.add_argument("--seed", type=int, default=defaults.seed, help="melody and split seed")
    p.add_argument(
        "--valid-fraction",
        type=float,
        default=defaults.valid_fraction,
        help=f"share of prompts held out for validation (default {defaults.valid_fraction})",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=defaults.test_fraction,
        help="share of prompts held out for test, by prompt name, in every language "
        f"(default {defaults.test_fraction})",
    )
    p.set_defaults(handler=_cmd_prep_real)
