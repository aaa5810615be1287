"""``comostream voice add|list|remove|rename``: your own voice as a new singer of a model file."""

from __future__ import annotations

import argparse
from pathlib import Path

from comostream.cli.common import CommandError, Subparsers, index_rate_option, positive_int, say

__all__ = ["register"]


def _model(path: Path | None) -> Path:
    from comostream.models.shipped import require_model

    return require_model(path)


def _register_text(med: float | None, lo: float | None, hi: float | None) -> str:
    from comostream.training.voice import hz_to_note

    if med is None:
        return "register unknown"
    text = f"median {med:.0f} Hz ({hz_to_note(med)})"
    if lo is not None and hi is not None:
        text += f", range {lo:.0f}-{hi:.0f} Hz ({hz_to_note(lo)}-{hz_to_note(hi)})"
    return text


def _cmd_add(args: argparse.Namespace) -> int:
    import time

    import torch

    from comostream.training.voice import MaterialError, VoiceOptions, add_voice

    t0 = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = _model(args.model)
    out: Path = args.output
    work = args.work or out.with_name(out.name + ".work")
    opts = VoiceOptions(
        steps=args.steps,
        seed=args.seed,
        mixed_voices="off" if args.no_check else "error" if args.strict else "warn",
        index=not args.no_index,
    )
    if out.exists() and out.resolve() == model.resolve():
        raise CommandError(f"{out}: the output would overwrite the input model; give another -o")
    embed = None if args.no_check else _speaker_embed()
    try:
        res = add_voice(
            args.data, args.name, model, out, opts, work, progress=not args.quiet, embed=embed
        )
    except MaterialError as exc:
        raise CommandError(f"{exc} (nothing written)") from None
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    vp = res.voiceprint
    say(
        f"wrote {out}: singer {res.name!r} added ({res.seconds:.0f} s, adaptation from "
        f"{res.init}, loss {res.loss_start:.4f} -> {res.loss_end:.4f}; features cached in {work})"
    )
    say(f"register: {_register_text(vp['f0_median'], vp.get('f0_low'), vp.get('f0_high'))}")
    if res.heldout and not args.no_check:
        _report_check(out, res)
    say(f"time taken: {time.perf_counter() - t0:.0f} s in all")
    return 0


def _speaker_embed():  # noqa: ANN202 - a callable or None
    from comostream.bench.quality import _Speaker

    spk = _Speaker()
    return spk.embed if spk.encoder is not None else None


def _report_check(out: Path, res) -> None:  # noqa: ANN001 - a VoiceResult
    from comostream.bench.voice import resynthesis_check
    from comostream.models.voiceprint import closest
    from comostream.realtime.load import load_models, load_voiceprints, read_export

    export = read_export(out)
    model, voc = load_models(out, payload=export)
    prints = load_voiceprints(out, payload=export)
    others = {k: v for k, v in prints.items() if k != res.name and "mcep" in v}
    nearest = closest(prints[res.name], others) if others else None
    heldout = [p.audio for p in res.heldout]
    voice = [p.audio for p in res.train_pieces]
    r = resynthesis_check(model, voc, res.name, heldout, voice, nearest)
    if not r["eval_packages"]:
        say("resynthesis check: similarity needs resemblyzer (pip install .[eval])")
    else:
        say(
            f"resynthesis of {r['seconds']:.0f} s held out: similarity to the voice "
            f"{r['sim']:.3f} as {res.name!r} vs {r['sim_nearest'] or float('nan'):.3f} as the "
            f"nearest earlier singer {nearest!r}"
        )
    if r["f0_rmse_cents"] is not None:
        say(f"F0 error of the resynthesis: {r['f0_rmse_cents']:.0f} cents RMS")


def _cmd_list(args: argparse.Namespace) -> int:
    from comostream.training.voice_file import list_voices

    model = _model(args.model)
    voices = list_voices(model)
    print(f"{model}: {len(voices)} singers")
    width = max(len(v.name) for v in voices)
    for v in voices:
        extra = ""
        if v.adaptation:
            ad = v.adaptation
            extra = f"  [added: {ad.get('audio_seconds')} s of audio, {ad.get('seconds')} s]"
        if v.index_size is not None:
            extra += f"  [index: {v.index_size} frames]"
        print(f"  {v.name:<{width}}  {_register_text(v.f0_median, v.f0_low, v.f0_high)}{extra}")
    return 0


def _edit(args: argparse.Namespace, fn, *names: str) -> int:  # noqa: ANN001
    from comostream.training.voice_file import backup_path

    if (args.output is None) == (not args.in_place):
        raise CommandError("give either -o OUT.ckpt or --in-place")
    model = _model(args.model)
    try:
        path = fn(model, *names, args.output)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    note = f" (previous file kept as {backup_path(model)})" if args.output is None else ""
    say(f"wrote {path}{note}")
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    from comostream.training.voice_file import remove_voice

    return _edit(args, remove_voice, args.name)


def _cmd_rename(args: argparse.Namespace) -> int:
    from comostream.training.voice_file import rename_voice

    return _edit(args, rename_voice, args.old, args.new)


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        metavar="MODEL.ckpt",
        help="inference file (default: the shipped model)",
    )


def _output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", type=Path, default=None, metavar="OUT.ckpt")
    p.add_argument(
        "--in-place",
        action="store_true",
        help="edit MODEL itself (atomically), keeping the previous file as MODEL.bak",
    )


def register(sub: Subparsers) -> None:
    """Add ``voice add|list|remove|rename`` to ``sub``."""
    voice = sub.add_parser(
        "voice",
        help="add your own voice to a model, list, remove or rename its singers",
        description="Singers of a model file: add one from recordings, list, remove, rename.",
    )
    vsub = voice.add_subparsers(dest="voice_command", metavar="SUBCOMMAND", required=True)

    p = vsub.add_parser(
        "add",
        help="add a singer from 30 s to 30 min of recordings (CPU, minutes)",
        description=(
            "Check the recordings, learn a new singer row of the model's singer table (every "
            "other weight frozen: the earlier singers sound exactly as before) and write a new "
            "model file with it. Ctrl-C and the same command again resume. See docs/voice.md."
        ),
    )
    p.add_argument("data", nargs="+", type=Path, metavar="DATA", help="folders or audio files")
    p.add_argument("--name", required=True, help="the new singer's name")
    _model_arg(p)
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.ckpt")
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="adaptation steps (default: 3 per second of audio, 400 to 1000)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed (the result is deterministic)")
    p.add_argument(
        "--work",
        type=Path,
        default=None,
        metavar="DIR",
        help="feature cache and resume state (default: OUT.ckpt.work next to the output)",
    )
    p.add_argument(
        "--strict", action="store_true", help="refuse (not just warn about) several voices mixed"
    )
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip the several-voices check and the resynthesis check at the end",
    )
    p.add_argument(
        "--no-index",
        action="store_true",
        help="store no retrieval index of the voice (convert's --index-rate then does nothing)",
    )
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_cmd_add)

    p = vsub.add_parser("list", help="the singers of a model and their registers")
    p.add_argument("model", nargs="?", type=Path, default=None, metavar="MODEL.ckpt")
    p.set_defaults(handler=_cmd_list)

    p = vsub.add_parser("remove", help="remove a singer (atomic write; a backup when in place)")
    p.add_argument("name")
    _model_arg(p)
    _output_args(p)
    p.set_defaults(handler=_cmd_remove)

    p = vsub.add_parser("rename", help="rename a singer (atomic write; a backup when in place)")
    p.add_argument("old")
    p.add_argument("new")
    _model_arg(p)
    _output_args(p)
    p.set_defaults(handler=_cmd_rename)


def _cmd_bench_voice(args: argparse.Namespace) -> int:
    import json

    import torch

    from comostream.bench.voice import format_voice_table, run_voice_bench

    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_voice_bench(
        _model(args.model),
        args.name,
        args.refs,
        args.sources or [],
        examples=not args.no_examples,
        baseline=args.baseline,
        max_sources=args.max_sources,
        progress=not args.json,
        index_rate=args.index_rate,
    )
    print(json.dumps(result, indent=2) if args.json else format_voice_table(result))
    return 0


def add_bench_voice(bench_sub: Subparsers) -> None:
    """``bench voice`` (registered by :mod:`comostream.cli.bench`)."""
    p = bench_sub.add_parser(
        "voice",
        help="how close conversions into an added singer come to the real voice",
        description=(
            "Convert held-out sources (the shipped examples and --sources) into NAME and "
            "report the Resemblyzer similarity to NAME's held-out recordings (--refs) vs to "
            "the source, the win rate, F0 error, DNSMOS and the adaptation time (see "
            "docs/voice.md). Needs the eval extra for similarity and DNSMOS."
        ),
    )
    _model_arg(p)
    p.add_argument("--name", required=True, help="the singer to convert into")
    p.add_argument(
        "--refs", type=Path, required=True, metavar="DIR", help="NAME's held-out recordings"
    )
    p.add_argument(
        "--sources", type=Path, nargs="*", default=None, metavar="DIR", help="more sources"
    )
    p.add_argument("--no-examples", action="store_true", help="leave the shipped examples out")
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also convert into the earlier singer nearest to NAME (by voice print)",
    )
    p.add_argument("--max-sources", type=positive_int, default=None, metavar="N")
    index_rate_option(p)
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_cmd_bench_voice)
