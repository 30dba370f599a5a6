"""Download, checksum and extract dataset archives.

Every failure is a one-line :class:`~cilkit.errors.DatasetError` that names the URL or file and
says where to put the files by hand, so an offline machine gets a clear instruction instead of a
traceback.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from cilkit.errors import DatasetError

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0


def file_md5(path: str | os.PathLike[str]) -> str:
    """Hex MD5 digest of a file, read in chunks.

    Args:
        path: file to hash.

    Returns:
        The 32-character lowercase hex digest.

    Raises:
        DatasetError: the file cannot be read.
    """
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror or e}") from None
    return digest.hexdigest()


def check_md5(path: str | os.PathLike[str], md5: str) -> None:
    """Raise a :class:`DatasetError` unless ``path`` has the MD5 digest ``md5``."""
    actual = file_md5(path)
    if actual != md5.lower():
        raise DatasetError(
            f"{Path(path).resolve()} has MD5 {actual}, expected {md5.lower()}: the file is "
            "incomplete or corrupted; delete it and download it again"
        )


def download_url(url: str, dest: str | os.PathLike[str], md5: str | None = None) -> Path:
    """Download ``url`` to the file ``dest``, checking its MD5 digest when one is given.

    The body is streamed to a temporary file in the destination folder and renamed into place
    only once it is complete and its checksum matches, so an interrupted download never leaves a
    truncated file under the final name. A file already at ``dest`` with the right checksum (or
    any file there when ``md5`` is None) is kept and not downloaded again.

    Args:
        url: address to fetch (``https://``, ``http://`` or ``file://``).
        dest: path of the file to write.
        md5: expected hex MD5 digest of the file, or None to skip the check.

    Returns:
        The absolute path of the downloaded file.

    Raises:
        DatasetError: the download failed (e.g. offline) or the checksum does not match.
    """
    dest = Path(dest).expanduser().resolve()
    if dest.is_file() and (md5 is None or file_md5(dest) == md5.lower()):
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as e:
        raise DatasetError(f"cannot write to {dest.parent}: {e.strerror or e}") from None
    tmp = Path(tmp_name)
    digest = hashlib.md5(usedforsecurity=False)
    logger.info("downloading %s to %s", url, dest)
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as r:
                while chunk := r.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
            raise DatasetError(
                f"could not download {url} ({reason}); put the files at {dest}"
            ) from None
        actual = digest.hexdigest()
        if md5 is not None and actual != md5.lower():
            raise DatasetError(
                f"downloaded {url} has MD5 {actual}, expected {md5.lower()}; the download is "
                f"incomplete or the file changed: put the official file at {dest}"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _safe_member_path(name: str, archive: Path) -> PurePosixPath:
    """The relative path of an archive member; absolute paths and ``..`` are refused."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise DatasetError(f"{archive}: refusing unsafe member path '{name}' (outside the folder)")
    return path


def _extract_tar(path: Path, dest: Path) -> None:
    with tarfile.open(path, "r:*") as tf:
        members = tf.getmembers()
        for m in members:
            _safe_member_path(m.name, path)
            if not (m.isfile() or m.isdir()):
                raise DatasetError(
                    f"{path}: refusing member '{m.name}' (links and special files are not allowed)"
                )
        for m in members:
            target = dest / _safe_member_path(m.name, path)
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(m)
            if src is None:  # pragma: no cover - regular files always have a body
                continue
            with src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)


def _extract_zip(path: Path, dest: Path) -> None:
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        for info in infos:
            _safe_member_path(info.filename, path)
        for info in infos:
            target = dest / _safe_member_path(info.filename, path)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)


def extract_archive(path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Extract a ``.tar.gz``/``.tgz``/``.tar``/``.zip`` archive into the folder ``dest``.

    Every member is checked before anything is written: members with absolute paths or ``..``
    components, and (for tar files) links and special files, are refused.

    Args:
        path: the archive.
        dest: folder to extract into (created when missing).

    Returns:
        The absolute path of ``dest``.

    Raises:
        DatasetError: the archive is truncated, corrupted, of an unknown kind or unsafe.
    """
    path = Path(path).expanduser().resolve()
    dest = Path(dest).expanduser().resolve()
    name = path.name.lower()
    logger.info("extracting %s to %s", path, dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        if name.endswith(".zip"):
            _extract_zip(path, dest)
        elif name.endswith((".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")):
            _extract_tar(path, dest)
        else:
            raise DatasetError(f"{path}: unknown archive type (expected .tar.gz, .tgz or .zip)")
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        detail = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise DatasetError(
            f"cannot extract {path} ({detail}): the archive is truncated or corrupted; "
            "delete it and download it again"
        ) from None
    return dest
