"""The wheel: one installed namespace (``comostream``), the shipped data inside, and commands that
work from any directory, even one holding a ``models.py`` (as an so-vits-svc checkout does)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [
    "comostream/models/assets/default.ckpt",
    "comostream/models/assets/examples/alto_line2.wav",
    "comostream/configs/default.toml",
    "comostream/configs/lowlat.toml",
    "comostream/realtime/serve/web/index.html",
    "comostream/realtime/serve/web/app.js",
    "comostream/docs/protocol.md",
]
SKIP = shutil.ignore_patterns(
    ".venv",
    ".git",
    "build",
    "out",
    "runs",
    "__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "dist",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the checkout (the source tree stays clean)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=SKIP)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(src),
            "-w",
            str(tmp / "dist"),
        ],
        check=True,
        capture_output=True,
    )
    (built,) = (tmp / "dist").glob("comostream-*.whl")
    return built


def test_wheel_installs_only_the_comostream_namespace_with_its_data(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"comostream"}
    missing = [f for f in SHIPPED if f not in names]
    assert not missing, f"not in the wheel: {missing}"
    sources = {
        p.relative_to(ROOT).as_posix()
        for d in ("models", "realtime", "training", "bench")
        for p in (ROOT / d).rglob("*.py")
    }
    installed = {n.removeprefix("comostream/") for n in names if n.endswith(".py")}
    assert not sources - installed, f"modules left out of the wheel: {sources - installed}"


def test_wheel_commands_run_from_a_folder_holding_models_py(wheel: Path, tmp_path: Path) -> None:
    """A fresh environment with only the wheel (its dependencies borrowed from this one): the
    console script and ``python -m comostream`` convert from a folder with clashing names."""
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    py = env_dir / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # dependencies from this environment; a .pth line adds the folder without running its own
    # .pth files, so this checkout's editable install stays out
    (purelib / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "--no-deps",
            "-q",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    work = tmp_path / "work"
    work.mkdir()
    (work / "models.py").write_text("raise ImportError('the wrong models module')\n")
    (work / "configs.py").write_text("raise ImportError('the wrong configs module')\n")
    example = ROOT / "models" / "assets" / "examples" / "alto_line2.wav"
    where = subprocess.run(
        [str(py), "-c", "import comostream.models.acoustic as m; print(m.__file__)"],
        cwd=work,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert where.startswith(str(purelib)), where
    res = subprocess.run(
        [str(py), "-m", "comostream", "convert", str(example), "-o", "out.wav", "--threads", "1"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert (work / "out.wav").stat().st_size > 10_000
    script = str(env_dir / "bin" / "comostream")
    res = subprocess.run(
        [script, "demo", "--input", str(example), "--speaker", "espeak_m7_tenor", "--out", "demo"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "espeak_m7_tenor" in res.stdout and list((work / "demo").glob("*.wav"))
    res = subprocess.run(
        [script, "serve", "--help"],
        cwd=work,
        env=dict(os.environ, COLUMNS="1000"),  # no wrapping inside the path
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    (doc,) = re.findall(r"\S+protocol\.md", res.stdout)  # the installed page
    assert doc.startswith(str(purelib)) and Path(doc).is_file(), doc
