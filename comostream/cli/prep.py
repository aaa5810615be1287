"""``comostream prep synth|features|gta``: the synthetic corpus and training features."""

from __future__ import annotations

import argparse
from pathlib import Path

from comostream.cli.common import (
    Subparsers,
    config_from_args,
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
    """Add ``prep`` (synth, features, gta) to ``sub``."""
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
    config_options(p, "corpus", CorpusConfig, ["singers", "minutes", "seed"])
    p.add_argument("--jobs", type=int, default=1, help="parallel worker processes (default 1)")
    p.set_defaults(handler=_cmd_prep_synth)

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
