"""Manifests of dataset folders: every file's path, size and SHA-256, and one hash over them all.

``cilkit data manifest ROOT -o FILE`` writes one (:func:`make_manifest`, :func:`write_manifest`);
``data.manifest: FILE`` makes a run check its dataset folder against it before training
(:func:`check_folder`), and every run records its folder's manifest hash in the dataset's
provenance line and ``extra["manifest_sha256"]`` (:func:`attach_manifest`).

A manifest is JSON lines: a header ``{"format": "cilkit-manifest", "version": 1, "root": ...,
"files": N, "bytes": B, "sha256": ...}``, then one line per file, sorted by path:
``{"path": "train/n01443537/x.JPEG", "size": 1234, "sha256": "...", "label": "n01443537"}``.
``label`` is the file's class folder where the path has one (the folder right under ``train/``,
``val/``, ``test/`` or ``images/``, passing over a folder named ``images``). The manifest hash is
the SHA-256 of the lines ``"<path>\\t<size>\\t<sha256>\\n"`` of all files in path order, so it
depends on the files' names and contents only. Hidden files and folders (names starting with
``.``, ``.cilkit_cache/`` among them) are left out.

Hashing reads every byte once (a few minutes for ImageNet's 140 GB on a local SSD); the hashes
of folders over :data:`HASH_CACHE_MIN_BYTES` are cached in the folder's ``.cilkit_cache/`` (or
the user's cache when it is read-only) by path, size and modification time, so later runs only
list the folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import TYPE_CHECKING, NamedTuple

from cilkit.data.datasets._common import is_image_file, writable_cache_dir
from cilkit.errors import ConfigError, DatasetError

if TYPE_CHECKING:
    from cilkit.config.schema import DataConfig
    from cilkit.data.base import DatasetSplits

logger = logging.getLogger(__name__)

FORMAT = "cilkit-manifest"
VERSION = 1
SPLIT_FOLDERS = ("train", "val", "test", "images")
"""Folders whose subfolders are class folders (the ``label`` of the files under them)."""
HASH_CACHE_MIN_BYTES = 64 * 2**20
"""Folders holding at least this many bytes keep their files' hashes in a cache."""
HASH_CACHE_NAME = "manifest-sha256.tsv"
HASH_THREADS = 8
_BLOCK = 2**20


@dataclass(frozen=True)
class Entry:
    """One file of a manifest: its path relative to the folder (``/``-separated), size, hash."""

    path: str
    size: int
    sha256: str
    label: str | None = None


@dataclass(frozen=True)
class Manifest:
    """The files of a folder, sorted by path.

    Attributes:
        root: the folder it was made of, as written in the file (for information: a manifest
            checks any folder holding the same files).
        entries: one per file.
    """

    root: str
    entries: tuple[Entry, ...]

    @property
    def sha256(self) -> str:
        """The manifest hash (see the module's docstring)."""
        h = hashlib.sha256()
        for e in self.entries:
            h.update(f"{e.path}\t{e.size}\t{e.sha256}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)


class Stat(NamedTuple):
    size: int
    mtime_ns: int


def label_of(path: str) -> str | None:
    """The class folder of an image file at ``path`` (see the module's docstring), or None."""
    if not is_image_file(path.rsplit("/", 1)[-1]):
        return None
    parts = path.split("/")[:-1]
    for i, part in enumerate(parts):
        if part in SPLIT_FOLDERS:
            below = [p for p in parts[i + 1 :] if p != "images"]
            return below[0] if below else None
    return None


def list_files(root: Path, exclude: Iterable[Path] = ()) -> dict[str, Stat]:
    """Every regular file under ``root`` (symbolic links followed, hidden names left out).

    Args:
        root: the folder.
        exclude: files to leave out (the manifest itself when it lies in the folder).

    Returns:
        ``{relative path: (size, mtime_ns)}`` in path order.

    Raises:
        DatasetError: ``root`` is not a folder.
    """
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; give the dataset folder")
    skip = {os.path.realpath(p) for p in exclude}
    found: dict[str, Stat] = {}
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back up the tree
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except OSError:
                continue  # a dangling link
            if not S_ISREG(st.st_mode) or (skip and os.path.realpath(path) in skip):
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            found[rel] = Stat(st.st_size, st.st_mtime_ns)
    return dict(sorted(found.items()))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


class _HashCache:
    """File hashes kept by (path, size, mtime) in ``<cache dir>/manifest-sha256.tsv``."""

    def __init__(self, root: Path, files: Mapping[str, Stat], rehash: bool) -> None:
        self.rehash = rehash
        self.path: Path | None = None
        self.known: dict[str, tuple[Stat, str]] = {}
        self.changed = False
        if sum(s.size for s in files.values()) < HASH_CACHE_MIN_BYTES:
            return
        folder = writable_cache_dir(root)
        if folder is None:
            return
        self.path = folder / HASH_CACHE_NAME
        try:
            lines = self.path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        except OSError:
            return
        for line in lines[1:]:
            fields = line.split("\t", 3)
            if len(fields) == 4 and fields[0].isdigit() and fields[1].lstrip("-").isdigit():
                self.known[fields[3]] = (Stat(int(fields[0]), int(fields[1])), fields[2])

    def get(self, rel: str, stat: Stat) -> str | None:
        hit = self.known.get(rel)
        return hit[1] if hit is not None and hit[0] == stat and not self.rehash else None

    def put(self, rel: str, stat: Stat, sha: str) -> None:
        if "\n" not in rel and "\t" not in rel:
            self.known[rel] = (stat, sha)
            self.changed = True

    def save(self, files: Mapping[str, Stat]) -> None:
        """Write the hashes of ``files`` (the others are dropped) atomically; skip on failure."""
        if self.path is None or not self.changed:
            return
        lines = ["# cilkit sha256 cache v1: size, mtime_ns, sha256, path"]
        for rel, (stat, sha) in self.known.items():
            if files.get(rel) == stat:
                lines.append(f"{stat.size}\t{stat.mtime_ns}\t{sha}\t{rel}")
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=".manifest-sha256.", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write("\n".join(lines) + "\n")
            os.replace(tmp, self.path)
            tmp = None
        except OSError as e:
            logger.info("not caching file hashes at %s (%s)", self.path, e.strerror or e)
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)


def iter_hashes(
    root: Path, files: Mapping[str, Stat], rehash: bool = False
) -> Iterator[tuple[str, str]]:
    """``(relative path, SHA-256)`` of ``files``, in their order, hashed in threads.

    Hashes cached for an unchanged (size, mtime) are reused unless ``rehash``; what was hashed
    is cached even when the caller stops early.
    """
    cache = _HashCache(root, files, rehash)
    total = sum(s.size for s in files.values())
    if total >= HASH_CACHE_MIN_BYTES:
        logger.info("hashing %d files (%.1f GB) under %s", len(files), total / 1e9, root)
    pool = ThreadPoolExecutor(max_workers=HASH_THREADS)
    pending: deque[tuple[str, Stat, str | None, Future[str] | None]] = deque()
    items = iter(files.items())
    try:
        while True:
            while len(pending) < 4 * HASH_THREADS:
                item = next(items, None)
                if item is None:
                    break
                rel, stat = item
                sha = cache.get(rel, stat)
                future = None if sha is not None else pool.submit(_sha256, root / rel)
                pending.append((rel, stat, sha, future))
            if not pending:
                return
            rel, stat, sha, future = pending.popleft()
            if future is not None:
                sha = future.result()
                cache.put(rel, stat, sha)
            yield rel, str(sha)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        cache.save(files)


def make_manifest(root: Path, rehash: bool = False, exclude: Iterable[Path] = ()) -> Manifest:
    """The manifest of every file under ``root`` (see :func:`list_files`).

    Args:
        root: the dataset folder.
        rehash: hash every file, ignoring the cached hashes.
        exclude: files to leave out.
    """
    root = Path(root).expanduser().resolve()
    files = list_files(root, exclude)
    entries = tuple(
        Entry(rel, files[rel].size, sha, label_of(rel))
        for rel, sha in iter_hashes(root, files, rehash)
    )
    return Manifest(str(root), entries)


def write_manifest(manifest: Manifest, path: Path) -> None:
    """Write ``manifest`` as JSON lines to ``path`` atomically."""
    header = {
        "format": FORMAT,
        "version": VERSION,
        "root": manifest.root,
        "files": len(manifest.entries),
        "bytes": manifest.total_bytes,
        "sha256": manifest.sha256,
    }
    lines = [json.dumps(header)]
    for e in manifest.entries:
        row = {"path": e.path, "size": e.size, "sha256": e.sha256}
        lines.append(json.dumps(row if e.label is None else {**row, "label": e.label}))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def read_manifest(path: Path) -> Manifest:
    """Read a manifest written by :func:`write_manifest`.

    Raises:
        DatasetError: the file is missing, not a cilkit manifest, or edited (its hash no longer
            matches its lines).
    """
    redo = f"make it again with: cilkit data manifest ROOT -o {path}"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DatasetError(
            f"manifest {path} not found; make it with: cilkit data manifest ROOT -o {path}"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read the manifest {path} ({e}); {redo}") from None
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        header = {}
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise DatasetError(
            f'{path} is not a cilkit manifest (no "format": "{FORMAT}" on its first line); {redo}'
        )
    if not isinstance(header.get("version"), int) or header["version"] > VERSION:
        raise DatasetError(
            f"{path} is a manifest of format version {header.get('version')}, this cilkit reads "
            f"version {VERSION}; upgrade cilkit or {redo}"
        )
    entries = []
    for n, line in enumerate(lines[1:], 2):
        try:
            row = json.loads(line)
            entries.append(
                Entry(str(row["path"]), int(row["size"]), str(row["sha256"]), row.get("label"))
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise DatasetError(
                f"{path}:{n}: not a manifest line (path, size, sha256); {redo}"
            ) from None
    manifest = Manifest(str(header.get("root", "")), tuple(entries))
    if header.get("files") != len(entries) or header.get("sha256") != manifest.sha256:
        raise DatasetError(
            f"{path} was edited or cut short: its lines do not give its sha256; {redo}"
        )
    return manifest


def check_folder(root: Path, manifest_path: Path) -> Manifest:
    """Check that ``root`` holds exactly the files of a manifest: sizes first, then hashes.

    Args:
        root: the dataset folder.
        manifest_path: the manifest file (left out of the folder's files when it lies there).

    Returns:
        The manifest, whose :attr:`Manifest.sha256` the run records.

    Raises:
        DatasetError: the first mismatch, naming the file: missing, extra, another size, or
            another SHA-256 (in that order of checks).
    """
    root = Path(root).expanduser().resolve()
    manifest = read_manifest(manifest_path)
    expected = {e.path: e for e in manifest.entries}
    found = list_files(root, exclude=[manifest_path])
    redo = f"make a new manifest with: cilkit data manifest {root} -o {manifest_path}"
    where = f"dataset folder {root} does not match the manifest {manifest_path}"
    for rel in sorted(expected.keys() | found.keys()):
        if rel not in found:
            raise DatasetError(f"{where}: {rel} is missing; restore it, or {redo}")
        if rel not in expected:
            raise DatasetError(f"{where}: {rel} is not in the manifest; remove it, or {redo}")
        if found[rel].size != expected[rel].size:
            raise DatasetError(
                f"{where}: {rel} has {found[rel].size:,} bytes, the manifest says "
                f"{expected[rel].size:,}; restore it, or {redo}"
            )
    hashes = iter_hashes(root, found)
    try:
        for rel, sha in hashes:
            if sha != expected[rel].sha256:
                raise DatasetError(
                    f"{where}: {rel} has changed (SHA-256 {sha[:16]}..., the manifest says "
                    f"{expected[rel].sha256[:16]}...); restore it, or {redo}"
                )
    finally:
        hashes.close()
    return manifest


class ManifestRecord(NamedTuple):
    """What a run records of its dataset folder."""

    sha256: str
    """The manifest hash of the folder."""
    checked: str | None
    """The manifest file the folder was checked against (``data.manifest``), or None."""


def dataset_manifest(cfg: DataConfig, folder: Path) -> ManifestRecord:
    """Check ``folder`` against ``cfg.manifest`` when it is set, else make its manifest hash."""
    if cfg.manifest:
        path = Path(cfg.manifest).expanduser().resolve()
        return ManifestRecord(check_folder(folder, path).sha256, str(path))
    return ManifestRecord(make_manifest(folder).sha256, None)


def attach_manifest(cfg: DataConfig, dataset: DatasetSplits) -> DatasetSplits:
    """``dataset`` with its folder's manifest hash in ``extra`` and at the end of its provenance.

    Adapters that check the manifest themselves before decoding (the image folders) have put
    ``manifest_sha256`` in ``extra`` already; for the others the folder they read is checked
    (``cfg.manifest``) or hashed now. Bundled data (no folder) records nothing.

    Raises:
        DatasetError: the folder does not match ``cfg.manifest``.
        ConfigError: ``cfg.manifest`` is set for a dataset that has no folder.
    """
    sha = dataset.extra.get("manifest_sha256")
    checked = dataset.extra.get("manifest_file")
    if sha is None:
        if dataset.root is None:
            if cfg.manifest:
                raise ConfigError(
                    f"data.manifest: {cfg.name} is bundled with its package, not read from a "
                    "folder; remove data.manifest"
                )
            return dataset
        sha, checked = dataset_manifest(cfg, dataset.root)
    note = f"manifest sha256 {sha}" + (f", matches {checked}" if checked else "")
    extra = {**dataset.extra, "manifest_sha256": sha, "manifest_file": checked}
    provenance = f"{dataset.provenance}; {note}" if dataset.provenance else note
    return dataclasses.replace(dataset, extra=extra, provenance=provenance)
