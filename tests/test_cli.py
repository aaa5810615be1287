"""The command-line face: help lists the commands; options map onto the config; one spelling
per idea across every command (walked over ``build_parser()``'s sub-parsers)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import comostream
from comostream.cli import build_parser, config_from_args

ROOT = Path(__file__).resolve().parent.parent


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        comostream.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "prep", "bench", "config"):
        assert command in out


def test_python_dash_m_help() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "comostream", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert "demo" in res.stdout and "bench" in res.stdout


def test_config_command_prints_the_default_config_as_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert comostream.main(["config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["audio"]["hop_length"] == 256


def test_bad_config_file_is_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[f0]\nbakend = 'dio'\n")
    assert comostream.main(["config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "f0.bakend" in err and "bad.toml" in err


def test_prep_synth_options_are_typed_from_config() -> None:
    parser = build_parser()
    args = parser.parse_args(["prep", "synth", "/tmp/x", "--singers", "3", "--minutes", "0.5"])
    cfg = config_from_args(args)
    assert cfg.corpus.singers == 3 and cfg.corpus.minutes == 0.5
    assert cfg.corpus.seed == 0


# ---------------------------------------------------------------- one spelling per idea


def _commands() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every leaf command as ``("bench latency", its parser)``."""

    def walk(prefix: str, parser: argparse.ArgumentParser):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield prefix, parser
        for action in subs:
            for name, child in action.choices.items():
                yield from walk(f"{prefix} {name}".strip(), child)

    yield from walk("", build_parser())


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: a for a in parser._actions for flag in a.option_strings}


COMMANDS = dict(_commands())


def test_the_walk_finds_every_command() -> None:
    for name in (
        "demo",
        "convert",
        "live",
        "serve",
        "client",
        "bridge",
        "prep gta",
        "train recipe",
        "export",
        "bench acoustic",
        "bench gpu",
        "config",
    ):
        assert name in COMMANDS


def test_no_option_is_spelled_samplerate() -> None:
    for name, parser in COMMANDS.items():
        flags = _options(parser)
        assert "--samplerate" not in flags, name
        if "--sample-rate" in flags:
            assert flags["--sample-rate"].metavar == "HZ", name


def test_every_command_with_a_checkpoint_has_threads_device_and_config() -> None:
    with_checkpoint = [n for n, p in COMMANDS.items() if "--checkpoint" in _options(p)]
    assert {
        "demo",
        "convert",
        "live",
        "serve",
        "bench latency",
        "bench quality",
        "bench content",
        "bench vocoder",
        "bench acoustic",
        "bench gpu",
    } <= set(with_checkpoint)
    for name in with_checkpoint:
        flags = _options(COMMANDS[name])
        assert "--config" in flags, name
        if name == "bench gpu":  # runs on CUDA only: no --device, no CPU threads to set
            continue
        assert "--threads" in flags and "--device" in flags, name
        assert flags["--device"].choices == ["cpu", "cuda"], name


def test_every_command_that_runs_a_model_has_threads_and_device() -> None:
    for name in ("prep gta", "bench f0"):
        flags = _options(COMMANDS[name])
        assert "--threads" in flags and "--device" in flags, name


def test_block_is_in_frames_on_every_command() -> None:
    with_block = {n: o["--block"] for n, p in COMMANDS.items() if "--block" in (o := _options(p))}
    assert {
        "convert",
        "live",
        "serve",
        "client",
        "bridge",
        "bench latency",
        "bench quality",
        "bench vocoder",
        "bench gpu",
    } <= set(with_block)
    for name, action in with_block.items():
        assert action.metavar == "FRAMES", name
        assert "frames" in action.help and "samples per" not in action.help, name


@pytest.mark.parametrize(
    "command", ["convert IN -o OUT", "live", "serve", "bench latency", "bench quality", "bench gpu"]
)
def test_block_overrides_realtime_block_frames_through_the_config(command: str) -> None:
    argv = [*command.split(), "--block", "5"]
    cfg = config_from_args(build_parser().parse_args(argv))
    assert cfg.realtime.block_frames == 5
    default = config_from_args(build_parser().parse_args(command.split()))
    assert default.realtime.block_frames == 2  # configs/default.toml


def test_client_and_bridge_block_is_frames_per_message() -> None:
    for command in (["client", "IN", "-o", "OUT"], ["bridge"]):
        args = build_parser().parse_args([*command, "--block", "4"])
        assert args.block == 4
        assert build_parser().parse_args(command).block is None  # the server's block


def test_speaker_is_a_name_or_a_weighted_mix_on_every_command() -> None:
    parser = build_parser()
    with_speaker = [n for n, p in COMMANDS.items() if "--speaker" in _options(p)]
    assert {"demo", "convert", "live", "client", "bridge"} <= set(with_speaker)
    for name in with_speaker:
        if name == "train finetune":  # names the singer being added: a name, never a mix
            continue
        base = {"convert": ["IN", "-o", "OUT"], "client": ["IN", "-o", "OUT"]}.get(name, [])
        argv = [*name.split(), *base]

        def speaker(text: str, argv: list[str] = argv) -> object:
            value = parser.parse_args([*argv, "--speaker", text]).speaker
            return value[-1] if isinstance(value, list) else value  # demo: repeatable

        assert speaker("alto") == "alto", name
        assert speaker("alto:1,bass:0.5") == {"alto": 1.0, "bass": 0.5}, name


@pytest.mark.parametrize("text", ["alto,bass", "alto:x", "alto:-1", "alto:0,bass:0", "alto:1,bass"])
def test_bad_speaker_mix_is_a_usage_error(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["convert", "IN", "-o", "OUT", "--speaker", text])
    assert exc.value.code == 2
    assert "--speaker" in capsys.readouterr().err


def test_demo_speaker_is_repeatable() -> None:
    args = build_parser().parse_args(["demo", "--speaker", "alto", "--speaker", "a:1,b:1"])
    assert args.speaker == ["alto", {"a": 1.0, "b": 1.0}]
    assert build_parser().parse_args(["demo"]).speaker is None  # every singer


@pytest.mark.parametrize(
    "command",
    [
        ["demo"],
        ["convert", "IN.wav", "-o", "OUT.wav"],
        ["serve"],
        ["live"],
        ["bench", "latency"],
        ["bench", "quality"],
        ["bench", "acoustic", "--checkpoint", "C", "--data", "D"],
        ["prep", "gta", "M", "--data", "D", "--out", "O"],
    ],
)
def test_device_cuda_without_cuda_is_one_clear_error(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    import comostream.models.shipped

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(comostream.models.shipped, "default_model_path", lambda: Path("M.ckpt"))
    assert comostream.main([*command, "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert "comostream: error: --device cuda: no CUDA device is available" in err


def test_threads_sets_torchs_intra_op_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from comostream.cli.common import use_runtime

    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    args = build_parser().parse_args(["convert", "IN", "-o", "OUT", "--threads", "3"])
    assert use_runtime(args) == "cpu" and calls == [3]
    args = build_parser().parse_args(["convert", "IN", "-o", "OUT"])
    assert use_runtime(args) == "cpu" and calls == [3]  # unset: torch's default stays


def test_recipe_and_gpu_check_are_subcommands() -> None:
    args = build_parser().parse_args(["train", "recipe", "out/run", "--quick"])
    assert args.run == Path("out/run") and args.quick
    assert build_parser().parse_args(["train", "recipe"]).run == Path("out/default-model")
    args = build_parser().parse_args(["bench", "gpu", "--block", "4", "--out", "o"])
    assert config_from_args(args).realtime.block_frames == 4 and args.out == Path("o")


def test_every_recipe_stage_is_a_valid_command_line(tmp_path: Path) -> None:
    from comostream.training.recipe import stages

    runs = (
        stages(tmp_path / "run"),
        stages(tmp_path / "coded", codebook=64),
        stages(tmp_path / "long", teacher_steps=8000),
    )
    for stage in (s for run in runs for s in run):
        args = build_parser().parse_args(stage.args)
        assert callable(args.handler), stage.name
        if "--lr-schedule" in stage.args:  # the longer teacher's cosine reaches its config
            assert config_from_args(args).train.lr_schedule == "cosine"


def test_build_parser_does_not_import_torch() -> None:
    code = (
        "import sys; from comostream.cli import build_parser; build_parser(); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


# ---------------------------------------------------------------- outputs that explain themselves


def test_a_reader_that_stops_early_ends_the_command_quietly() -> None:
    """``comostream config | head -c 10``: no BrokenPipeError traceback, status 141 (SIGPIPE)."""
    exe = Path(sys.executable).parent / "comostream"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "comostream"]
    res = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$@" config | head -c 10', "bash", *cmd],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert res.stdout == '{\n  "audio'[:10] and "Traceback" not in res.stderr, res.stderr
    assert res.stderr == "" and res.returncode in (0, 141)  # 0: it wrote all before head left
    # the reader gone before the first write: always a broken pipe
    proc = subprocess.Popen(
        [*cmd, "config"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and err == ""


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        comostream.main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse's line wrapping undone


def test_training_stage_help_reads_as_a_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    assert "Add a singer to a distilled model and learn its embedding." in _help(
        ["train", "finetune"], capsys
    )
    assert "Train the EDM diffusion teacher" in _help(["train", "teacher"], capsys)
    assert "Distil a teacher into a one-step model" in _help(["train", "distill"], capsys)
    for stage in ("teacher", "distill", "finetune"):
        assert "Train add" not in _help(["train", stage], capsys)


def test_live_help_lists_every_console_command(capsys: pytest.CaptureFixture[str]) -> None:
    from comostream.realtime.live.console import COMMAND_HELP, COMMANDS, parse_command

    text = _help(["live"], capsys)
    for typed, what in COMMANDS:
        assert f"{typed} ({what})" in text and typed in COMMAND_HELP
    # every command listed is one the console takes
    for verb in {typed.split()[0] for typed, _ in COMMANDS}:
        assert verb in ("s", "t", "m") or parse_command(verb, ["alto"]) is not None
    assert "l (list singers)" in text


def test_output_commands_say_how_the_format_is_chosen(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["convert"], ["client"]):
        text = _help(argv, capsys)
        assert ".wav is 32-bit float" in text and ".flac 24-bit PCM" in text, argv
        assert "--subtype" in text and "OUT.flac" in text, argv


def test_bench_latency_help_and_report_name_the_same_default_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from comostream.bench.latency import RANDOM_WEIGHTS

    text = _help(["bench", "latency"], capsys)
    assert "default: random weights of the configured sizes" in text
    assert "shipped model" in text  # how to measure that one instead
    assert RANDOM_WEIGHTS.startswith("random weights of the configured sizes")


def test_client_refuses_an_output_format_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.wav"
    src.write_bytes(b"")  # never read: the output is checked first
    argv = ["client", str(src), "-o", str(tmp_path / "out.mp3"), "--url", "ws://127.0.0.1:9/ws"]
    assert comostream.main(argv) == 1
    err = capsys.readouterr().err
    assert "extension '.mp3'" in err and "127.0.0.1" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.wav"]
