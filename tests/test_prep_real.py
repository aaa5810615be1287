"""Tests for the real-voices corpus (comostream.training.real, debs): tiny .deb fixtures built with
dpkg-deb from G.722 prompts encoded here; apt-get is injected or faked on PATH (no network)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
from pathlib import Path

import G722  # the g722 PyPI package (a dependency)
import numpy as np
import pytest
import soundfile as sf

import comostream.cli as cli
from comostream.training import asterisk, real
from comostream.training.corpus import CorpusError, load_corpus
from comostream.training.debs import PackageError, check_allowed, fetch_deb, read_deb

from helpers import sung

pytestmark = pytest.mark.skipif(
    shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed (Debian's dpkg)"
)

SR, HOP, SRC = 24000, 256, 16000
EN = asterisk.REAL_VOICES[0]
DIR = f"usr/share/asterisk/sounds/{EN.sounds_dir}"
TEXTS = {"hello": "Hello there.", "digits/1": "one", "beep": "[this is a simple beep tone]"}


def _g722(x: np.ndarray) -> bytes:
    pcm = np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)
    return G722.G722(SRC, 64000).encode(pcm)


def _build_deb(root: Path, package: str, files: dict[str, bytes], out: Path) -> Path:
    tree = root / package
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 9.9-1\nArchitecture: all\nMaintainer: t <t@t>\n"
        "Description: test fixture\n"
    )
    for name, data in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    deb = out / f"{package}_9.9-1_all.deb"
    subprocess.run(
        ["dpkg-deb", "-Zgzip", "--root-owner-group", "--build", str(tree), str(deb)],
        check=True,
        capture_output=True,
    )
    return deb


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of .debs like `apt-get download` leaves: the prompts and their transcripts."""
    root = tmp_path_factory.mktemp("debs")
    out = root / "repo"
    out.mkdir()
    pad = np.zeros(int(0.3 * SRC), dtype=np.float32)
    t = np.arange(int(0.5 * SRC)) / SRC
    prompts = {
        "hello": np.concatenate([pad, sung(SRC, 1.2), pad]),
        "digits/1": np.concatenate([pad, sung(SRC, 0.9)[::-1].copy(), pad]),
        "beep": 0.3 * np.sin(2 * np.pi * 1000 * t).astype(np.float32),  # transcript: a tone
        "quiet": np.zeros(SRC, dtype=np.float32),  # silent
        "confbridge-join": np.concatenate([pad, sung(SRC, 0.8), pad]),  # a sound, by its name
        "click": np.concatenate([pad, sung(SRC, 0.2), pad]),  # too short once trimmed
    }
    _build_deb(root, EN.package, {f"{DIR}/{k}.g722": _g722(v) for k, v in prompts.items()}, out)
    txt = "; Core Asterisk Sounds in English\n\n" + "".join(f"{k}: {v}\n" for k, v in TEXTS.items())
    doc = f"usr/share/doc/{EN.text_package}/core-sounds-en.txt.gz"
    _build_deb(root, EN.text_package, {doc: gzip.compress(txt.encode(), mtime=0)}, out)
    _build_deb(root, "asterisk-core-sounds-it-g722", {f"{DIR}/x.g722": b"\0" * 800}, root)
    return out


def _copier(repo: Path, calls: list[str]):
    def download(package: str, cache: Path) -> None:
        calls.append(package)
        for deb in repo.glob(f"{package}_*.deb"):
            shutil.copy(deb, cache)

    return download


def _prep(out: Path, repo: Path, calls: list[str] | None = None, **kw) -> Path:
    kw.setdefault("seed", 1)
    return real.prepare_real_corpus(
        out,
        [EN],
        cache_dir=out.parent / (out.name + ".debs"),
        download=_copier(repo, calls if calls is not None else []),
        progress=False,
        **kw,
    )


@pytest.fixture(scope="module")
def corpus(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    calls: list[str] = []
    out = tmp_path_factory.mktemp("real") / "corpus"
    _prep(out, repo, calls)
    assert calls == [EN.package, EN.text_package]  # fetched because the cache was empty
    return out


def _records(root: Path) -> list[dict]:
    return [json.loads(s) for s in (root / "manifest.jsonl").read_text().splitlines()]


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_layout_manifest_and_licence_follow_the_corpus_format(corpus: Path) -> None:
    recs = _records(corpus)
    assert [(r["singer"], r["prompt"]) for r in recs] == [
        ("allison", "digits/1"),
        ("allison", "hello"),
        ("allison_sung", "digits/1"),
        ("allison_sung", "hello"),
    ]
    for r in recs:
        assert r["licence"] == "CC-BY-SA-3.0" and r["speaker"] == "Allison Smith"
        assert r["package"] == EN.package and r["package_version"] == "9.9-1"
        assert r["source"] == f"{DIR}/{r['prompt']}.g722" and r["text"] == TEXTS[r["prompt"]]
        assert r["path"].startswith(r["singer"] + "/") and (corpus / r["path"]).is_file()
        assert ("f0" in r) == (r["kind"] == "sung") and r["split"] in ("train", "valid", "test")
    utts = load_corpus(corpus)  # the training pipeline reads it unchanged
    assert sorted({u.singer for u in utts}) == ["allison", "allison_sung"]
    assert all((u.f0_path is not None) == u.singer.endswith("_sung") for u in utts)
    info = json.loads((corpus / "corpus.json").read_text())
    dropped = {Path(d["source"]).stem: d["reason"] for d in info["voices"][0]["dropped"]}
    assert set(dropped) == {"beep", "quiet", "click", "confbridge-join"}
    assert dropped["quiet"] == "silent" and dropped["click"] == "too short"
    assert dropped["beep"] == f"not speech ({TEXTS['beep']})"
    assert dropped["confbridge-join"].startswith("not speech")


def test_audio_is_24k_mono_pcm16_with_the_silence_trimmed(corpus: Path) -> None:
    for r in _records(corpus):
        info = sf.info(str(corpus / r["path"]))
        assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
        assert r["seconds"] == pytest.approx(info.frames / SR, abs=1e-5)
    spoken = {r["prompt"]: r["seconds"] for r in _records(corpus) if r["kind"] == "spoken"}
    assert 1.2 <= spoken["hello"] < 1.2 + 0.2  # 0.6 s of padding gone, 50 ms margins kept
    assert 0.9 <= spoken["digits/1"] < 0.9 + 0.2


def test_sung_versions_carry_their_exact_f0(corpus: Path) -> None:
    import pyworld as pw

    for r in _records(corpus):
        if r["kind"] != "sung":
            continue
        x, sr = sf.read(corpus / r["path"])
        raw = np.load(corpus / r["f0"])
        assert raw.dtype == np.float32 and raw.shape == (len(x) // HOP + 1,)
        gt = raw.astype(np.float64)
        est, _ = pw.harvest(x, sr, f0_floor=50.0, f0_ceil=1100.0, frame_period=1000 * HOP / sr)
        v = gt > 0
        assert v.mean() > 0.3
        cents = np.abs(1200 * np.log2(np.maximum(est[v], 1e-3) / gt[v]))
        assert (cents < 50).mean() >= 0.85 and np.median(cents) < 10, r["path"]


def test_same_seed_gives_the_same_bytes_and_another_seed_other_melodies(
    corpus: Path, repo: Path, tmp_path: Path
) -> None:
    _prep(tmp_path / "again", repo)
    assert _tree(tmp_path / "again") == _tree(corpus)
    _prep(tmp_path / "other", repo, seed=2)
    other = _tree(tmp_path / "other")
    assert other["allison/0004_hello.wav"] == _tree(corpus)["allison/0004_hello.wav"]
    assert other["allison_sung/0004_hello.wav"] != _tree(corpus)["allison_sung/0004_hello.wav"]


def test_a_rerun_writes_nothing_and_an_interrupted_run_resumes(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "c"
    _prep(out, repo, limit=1)
    first = _tree(out)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    calls: list[str] = []
    _prep(out, repo, calls, limit=1)
    assert calls == []  # the cached .debs are used
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps
    victim = next((out / "allison_sung").glob("*.wav"))
    victim.unlink()
    _prep(out, repo, limit=1)
    assert _tree(out) == first
    assert len([r for r in _records(out) if r["singer"] == "allison"]) == 1
    with pytest.raises(CorpusError, match="seed = 1, not 2"):  # its files would not fit
        _prep(out, repo, seed=2)
    assert _tree(out) == first


def test_evaluation_packages_are_refused_everywhere(repo: Path, tmp_path: Path) -> None:
    for name in (
        "asterisk-core-sounds-it-g722",
        "asterisk-core-sounds-ru-wav",
        "asterisk-prompt-fr-armelle",
        "Asterisk-Core-Sounds-RU-gsm",
    ):
        with pytest.raises(PackageError, match="kept out of training"):
            check_allowed(name)
        with pytest.raises(PackageError, match="kept out of training"):
            asterisk.resolve_voices([name])
        with pytest.raises(PackageError, match="kept out of training"):
            fetch_deb(name, tmp_path, download=lambda p, c: pytest.fail("must not download"))
    with pytest.raises(PackageError, match="kept out of training"):  # renamed file, read anyway
        read_deb(repo.parent / "asterisk-core-sounds-it-g722_9.9-1_all.deb")
    assert asterisk.resolve_voices(["june", EN.package]) == [asterisk.REAL_VOICES[2], EN]


def _fake_apt_get(tmp_path: Path, repo: Path, knows: list[str]) -> str:
    """A PATH with an `apt-get` that 'downloads' only the ``knows`` packages from ``repo``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "apt-get"
    cases = "".join(f'  {p}) cp "{repo}"/{p}_*.deb . ;;\n' for p in knows)
    script.write_text(
        '#!/bin/sh\n[ "$1" = download ] || exit 2\ncase "$2" in\n'
        + cases
        + '  *) echo "E: Unable to locate package $2" >&2; exit 100 ;;\nesac\n'
    )
    script.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


def test_apt_get_failure_names_the_package_and_the_command(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("PATH", _fake_apt_get(tmp_path, repo, [EN.text_package]))
    assert cli.main(["prep", "real", str(tmp_path / "out"), "--voices", "allison"]) == 1
    err = capsys.readouterr().err
    assert f"apt-get download {EN.package} failed (exit 100)" in err
    assert "Unable to locate package" in err and "sudo apt-get update" in err
    assert f"apt-get download {EN.package})" in err  # the command to run by hand


def test_cli_fetches_with_apt_get_into_the_cache(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("PATH", _fake_apt_get(tmp_path, repo, [EN.package, EN.text_package]))
    out = tmp_path / "out"
    args = ["prep", "real", str(out), "--voices", "allison", "--no-sung", "--limit", "1"]
    assert cli.main(args) == 0
    assert sorted(p.name for p in (out / ".debs").iterdir()) == sorted(
        p.name for p in repo.iterdir()
    )
    assert "allison: 1 utterances" in capsys.readouterr().out
    assert [r["singer"] for r in _records(out)] == ["allison"]


def test_splits_go_by_prompt_seeded_and_sized() -> None:
    names = [f"p{i}" for i in range(2000)]
    splits = [real.prompt_split(n, 0, 0.1, 0.15) for n in names]
    assert splits == [real.prompt_split(n, 0, 0.1, 0.15) for n in names]
    assert 0.12 < splits.count("test") / 2000 < 0.18
    assert 0.07 < splits.count("valid") / 2000 < 0.13
    assert splits != [real.prompt_split(n, 1, 0.1, 0.15) for n in names]


def test_long_prompts_are_sung_on_several_melodies() -> None:
    short, long_ = real.sung_melody(0, 5, 1.0), real.sung_melody(0, 5, 13.0)
    assert 1.5 <= short.notes_seconds <= 1.6 and len(short.notes) <= 12
    assert len(long_.notes) >= 4 * 5 and long_.notes_seconds == pytest.approx(19.5, abs=0.01)
    assert real.sung_melody(0, 5, 13.0) == long_
