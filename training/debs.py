"""Debian packages as a data source: ``apt-get download`` into a cache, read without installing.

A ``.deb`` is an ``ar`` archive holding ``control.tar.*`` and ``data.tar.*``; both are read here
with Python's own ``tarfile`` (gzip, xz, bzip2 or uncompressed members), so nothing is installed
and no root is needed. Some packages are kept for evaluation and are refused by name.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "EVALUATION_ONLY",
    "DebPackage",
    "Downloader",
    "PackageError",
    "apt_get_download",
    "check_allowed",
    "fetch_deb",
    "read_deb",
]

# Kept out of training, for evaluation (issue 14): refused whoever asks for them.
EVALUATION_ONLY = ("asterisk-core-sounds-it-", "asterisk-core-sounds-ru-", "asterisk-prompt-")

Downloader = Callable[[str, Path], None]  # (package, cache_dir) -> leaves <package>_*.deb there


class PackageError(RuntimeError):
    """A Debian package is refused, cannot be downloaded or cannot be read."""


@dataclass(frozen=True)
class DebPackage:
    """An unpacked-in-memory ``.deb``: control fields and regular files by path (``usr/...``)."""

    path: Path
    name: str
    version: str
    files: dict[str, bytes]

    def members(self, suffix: str, under: str = "") -> Iterator[tuple[str, bytes]]:
        """``(path, bytes)`` of the files ending in ``suffix`` below ``under``, sorted by path."""
        for name in sorted(self.files):
            if name.endswith(suffix) and name.startswith(under):
                yield name, self.files[name]


def check_allowed(package: str) -> None:
    """Raise :class:`PackageError` if ``package`` is one of the evaluation-only packages."""
    base = package.strip().lower()
    for prefix in EVALUATION_ONLY:
        if base.startswith(prefix) or base == prefix.rstrip("-"):
            raise PackageError(
                f"refusing Debian package {package!r}: {prefix}* packages are kept out of "
                "training for evaluation (issue 14)"
            )


def apt_get_download(package: str, cache_dir: Path) -> None:
    """Run ``apt-get download PACKAGE`` in ``cache_dir``; PackageError (apt's words) on failure."""
    cmd = ["apt-get", "download", package]
    try:
        res = subprocess.run(cmd, cwd=cache_dir, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise PackageError(
            f"cannot download Debian package {package!r}: apt-get not found. On a Debian or "
            f"Ubuntu machine run: (cd {cache_dir} && apt-get download {package}), "
            f"or copy {package}_*.deb into {cache_dir}"
        ) from None
    if res.returncode != 0:
        said = " ".join((res.stderr or res.stdout).split())[-400:]
        raise PackageError(
            f"apt-get download {package} failed (exit {res.returncode}): {said}\n"
            f"Run `sudo apt-get update`, then: (cd {cache_dir} && apt-get download {package}); "
            f"or copy {package}_*.deb into {cache_dir}"
        )


def _cached(package: str, cache_dir: Path) -> Path | None:
    debs = sorted(cache_dir.glob(f"{package}_*.deb"))
    return debs[-1] if debs else None


def fetch_deb(package: str, cache_dir: Path, download: Downloader = apt_get_download) -> Path:
    """Path of ``cache_dir/<package>_*.deb``, downloaded with ``download`` when missing.

    Refuses evaluation-only packages (:func:`check_allowed`) before looking anywhere.
    """
    check_allowed(package)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = _cached(package, cache_dir)
    if found is None:
        download(package, cache_dir)
        found = _cached(package, cache_dir)
    if found is None:
        raise PackageError(
            f"Debian package {package!r}: no {package}_*.deb in {cache_dir} after downloading; "
            f"run: (cd {cache_dir} && apt-get download {package})"
        )
    return found


def _ar_members(data: bytes, where: Path) -> dict[str, bytes]:
    if not data.startswith(b"!<arch>\n"):
        raise PackageError(f"{where}: not a Debian package (no ar header)")
    out: dict[str, bytes] = {}
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise PackageError(f"{where}: corrupt ar member header at byte {pos}") from None
        out[name] = data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)
    return out


def _tar_files(blob: bytes, name: str, where: Path) -> dict[str, bytes]:
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
            files = {}
            for m in tar.getmembers():
                fh = tar.extractfile(m) if m.isfile() else None
                if fh is not None:
                    files[m.name.removeprefix("./")] = fh.read()
            return files
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise PackageError(
            f"{where}: cannot read {name} ({exc}); unpack it with `dpkg-deb -x {where} DIR`"
        ) from None


def _control_field(control: str, field: str) -> str:
    for line in control.splitlines():
        if line.lower().startswith(field.lower() + ":"):
            return line.split(":", 1)[1].strip()
    return ""


def read_deb(path: Path) -> DebPackage:
    """Read a ``.deb`` without installing it: package name, version and every regular file."""
    path = Path(path)
    members = _ar_members(path.read_bytes(), path)
    control_name = next((k for k in members if k.startswith("control.tar")), None)
    data_name = next((k for k in members if k.startswith("data.tar")), None)
    if control_name is None or data_name is None:
        raise PackageError(f"{path}: no control.tar.* or data.tar.* member; not a .deb")
    control = _tar_files(members[control_name], control_name, path).get("control", b"")
    text = control.decode("utf-8", "replace")
    name = _control_field(text, "Package")
    check_allowed(name)
    return DebPackage(
        path=path,
        name=name,
        version=_control_field(text, "Version"),
        files=_tar_files(members[data_name], data_name, path),
    )
