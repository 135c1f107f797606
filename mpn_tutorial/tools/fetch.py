"""Obtaining the four benchmarks: ``python -m mpn_tutorial fetch NAME --root DIR`` (see data/README.md).

What to download is in ``registry.py``. The archives are large (1-3 GB) and come from third parties,
hence resumable, verified downloads (:func:`download`) and guarded extraction (:func:`safe_extract`).
HTTP uses only the standard library (``urllib``).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath, PureWindowsPath

from mpn_tutorial.errors import (
    ChecksumMismatchError,
    DownloadError,
    DownloadInterrupted,
    FetchError,
    ManualDownloadRequired,
    UnsafeArchiveError,
)
from mpn_tutorial.tools.registry import DatasetSource, RemoteFile, dataset_source

USER_AGENT = "mpn_tutorial-fetch/0.1 (python urllib)"
CHUNK_SIZE = 1 << 20  # bytes per read, from the network and from disk
ProgressCallback = Callable[[int, int | None], None]  # (bytes so far, total bytes or None)


# -- download ---------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks (archives are larger than memory should hold)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str) -> None:
    """Raise :class:`ChecksumMismatchError` unless ``path`` hashes to ``expected``; the file is kept."""
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ChecksumMismatchError(
            f"SHA-256 mismatch for {path}: expected {expected.lower()}, got {actual}. "
            "The file is corrupt, truncated or a different release; delete it and download it again."
        )


def partial_path(destination: str | os.PathLike) -> Path:
    """Where :func:`download` keeps the bytes of an unfinished download of ``destination``."""
    destination = Path(destination)
    return destination.with_name(destination.name + ".partial")


def download(
    url: str,
    destination: str | os.PathLike,
    sha256: str | None = None,
    *,
    retries: int = 3,
    timeout: float = 60.0,
    progress: ProgressCallback | None = None,
) -> Path:
    """Download ``url`` (http or https) to ``destination``, resumably and verified; returns ``destination``.

    Bytes are appended to :func:`partial_path`; when it exists (an earlier call was interrupted) only
    the rest is requested (``Range: bytes=<size>-``). A broken connection is resumed up to ``retries``
    times, then :class:`DownloadInterrupted` is raised and the partial file kept for the next call.
    The complete file is deleted if its hash is not ``sha256`` (:class:`ChecksumMismatchError`), else
    renamed to ``destination`` in one atomic step. An existing ``destination`` is returned as is.

    Args:
        destination: final file path; its folder is created if needed.
        sha256: expected hex SHA-256, or None to skip verification.
        timeout: seconds a connect or a read may stall before it counts as an interruption.
        progress: called as ``progress(bytes_so_far, total_bytes_or_None)`` after each chunk.
    """
    destination = Path(destination)
    if destination.exists():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(destination)
    for attempt in range(retries + 1):
        try:
            _transfer(url, partial, timeout, progress)
            break
        except DownloadInterrupted:
            if attempt == retries:
                raise
            time.sleep(min(attempt, 10))  # brief back-off: a dropped connection is often transient
    if sha256 is not None:
        actual = sha256_file(partial)
        if actual != sha256.lower():
            partial.unlink()
            raise ChecksumMismatchError(
                f"SHA-256 mismatch for {url}: expected {sha256.lower()}, got {actual}. The download was "
                "deleted (not kept as a complete-looking file); run again to download it afresh."
            )
    os.replace(partial, destination)  # atomic: the final name never points at half a file
    return destination


def _transfer(url: str, partial: Path, timeout: float, progress: ProgressCallback | None) -> None:
    """One HTTP request that appends the missing bytes of ``url`` to ``partial``."""
    offset = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # Range Not Satisfiable: nothing lies beyond what we have. The partial file is whole,
            # unless the server says the file is shorter than it (then it is junk: start over).
            total = exc.headers.get("Content-Range", "").rpartition("/")[2]
            if total.isdigit() and int(total) != offset:
                partial.unlink()
                raise DownloadInterrupted(f"{partial} was longer than {url} ({total} bytes); starting over") from exc
            return
        raise DownloadError(f"downloading {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot reach {url}: {reason}") from exc

    with response:
        content_length = response.headers.get("Content-Length")
        if offset and response.status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                raise DownloadError(
                    f"{url} answered a resume request at byte {offset} with bytes from {start}; "
                    f"delete {partial} and try again"
                )
            mode, received = "ab", offset
        else:
            # 200: the whole file (first request, or a server that ignores Range): start over.
            mode, received = "wb", 0
            total = int(content_length) if content_length is not None else None
        with open(partial, mode) as file:
            while True:
                try:
                    chunk = response.read(CHUNK_SIZE)
                except (OSError, http.client.HTTPException) as exc:  # reset, timeout, bad chunking
                    raise _interrupted(url, partial, received, total, exc) from exc
                if not chunk:
                    break
                file.write(chunk)
                received += len(chunk)
                if progress is not None:
                    progress(received, total)
    # http.client returns an empty read, not an error, when the peer closes early: compare sizes.
    if total is not None and received < total:
        raise _interrupted(url, partial, received, total, "connection closed early")


def _interrupted(url: str, partial: Path, received: int, total: int | None, reason: object) -> DownloadInterrupted:
    of_total = f" of {total:,}" if total is not None else ""
    return DownloadInterrupted(
        f"download of {url} interrupted after {received:,}{of_total} bytes ({reason}); the bytes so far "
        f"are kept in {partial} and the next attempt resumes from there"
    )


def _parse_content_range(header: str | None) -> tuple[int, int | None]:
    """``'bytes 100-999/1000'`` -> ``(100, 1000)``; the total is None when the server sends ``*``."""
    try:
        unit, _, spec = header.partition(" ")  # type: ignore[union-attr]
        span, _, total = spec.partition("/")
        if unit != "bytes":
            raise ValueError(unit)
        return int(span.split("-")[0]), (None if total == "*" else int(total))
    except (AttributeError, ValueError):
        raise DownloadError(f"unexpected Content-Range header {header!r} in a resumed download") from None


# -- extraction -------------------------------------------------------------------------------


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract a .tgz / .tar.gz / .tar / .zip archive into ``target``; returns ``target``.

    :class:`UnsafeArchiveError` is raised, and nothing further extracted, for a member with an
    absolute path (``/etc/passwd``, ``C:\\x``), one that resolves outside ``target`` (``../evil``, or
    through a link already on disk), a link pointing outside ``target``, or a tar device file or FIFO.
    A zip is checked completely first; a tar is a stream, so the members before the offending one are
    already extracted (inside ``target``). ``zipfile`` writes a zip symlink as a file holding the link
    text, so none is followed, but escaping ones are refused all the same: they betray a hostile archive.
    """
    archive, target = Path(archive), Path(target)
    name = archive.name.lower()
    if not name.endswith((".tgz", ".tar.gz", ".tar", ".zip")):
        raise FetchError(f"cannot extract {archive}: unknown archive type (expected .tgz, .tar.gz, .tar or .zip)")
    target.mkdir(parents=True, exist_ok=True)
    try:
        if name.endswith(".zip"):
            _extract_zip(archive, target)
        else:
            _extract_tar(archive, target)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as exc:  # damaged or truncated
        raise FetchError(f"{archive} is not a readable archive ({exc}); download it again") from exc
    return target


def _refuse(archive: Path, member: str, target: Path, reason: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(
        f"refusing to extract {archive}: member {member!r} {reason}, outside {target}. "
        "Nothing further was extracted; the archive is damaged or hostile, so do not use it."
    )


def _resolve_inside(archive: Path, member: str, path: str, base: Path, root: Path, link: bool = False) -> Path:
    """``base / path`` resolved; raises unless ``path`` is relative and stays inside ``root`` (resolved).

    ``path`` is the name of ``member`` or, with ``link``, the target of that link member. resolve()
    also follows links already on disk, so a path through an earlier extracted link
    (``link/../../x``) is judged by where it really goes.
    """
    if path.startswith(("/", "\\")) or PureWindowsPath(path).drive:
        raise _refuse(archive, member, root, f"links to the absolute path {path!r}" if link else "has an absolute path")
    resolved = (base / path.replace("\\", "/")).resolve()
    if resolved != root and root not in resolved.parents:
        raise _refuse(archive, member, root, f"links to {resolved}" if link else f"resolves to {resolved}")
    return resolved


def _extract_tar(archive: Path, target: Path) -> None:
    root = target.resolve()
    # Python >= 3.12 (and recent 3.10/3.11 patch releases) can also filter for us; we keep our own
    # checks so older Pythons are safe and the errors say what happened.
    filter_argument = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            _resolve_inside(archive, member.name, member.name, root, root)
            if member.issym():
                # A symlink's target is relative to the folder holding the link.
                _resolve_inside(archive, member.name, member.linkname, (root / member.name).parent, root, link=True)
            elif member.islnk():
                # A hard link's target is another member, named relative to the archive root.
                _resolve_inside(archive, member.name, member.linkname, root, root, link=True)
            elif not (member.isfile() or member.isdir()):
                raise _refuse(archive, member.name, root, "is a device file or FIFO, which has no place")
            tar.extract(member, root, set_attrs=False, **filter_argument)


def _extract_zip(archive: Path, target: Path) -> None:
    root = target.resolve()
    with zipfile.ZipFile(archive) as zip_file:
        members = zip_file.infolist()
        for info in members:  # check everything first: nothing is written from a hostile zip
            destination = _resolve_inside(archive, info.filename, info.filename, root, root)
            if (info.external_attr >> 16) & 0o170000 == 0o120000:  # a symlink: S_IFLNK in the Unix mode bits
                target = zip_file.read(info).decode("utf-8", errors="replace")
                _resolve_inside(archive, info.filename, target, destination.parent, root, link=True)
        for info in members:
            zip_file.extract(info, root)


# -- fetching a dataset -----------------------------------------------------------------------


def extracted_marker(archive: str | os.PathLike) -> Path:
    """The empty file written next to ``archive`` once it has been extracted completely: a repeated
    fetch skips the archive (which you may then delete to save space). Delete the marker to extract again."""
    archive = Path(archive)
    return archive.with_name(archive.name + ".extracted")


def fetch_dataset(name: str, root: str | os.PathLike = "data", progress: ProgressCallback | None = None) -> Path:
    """Download (where possible), verify and extract dataset ``name`` under ``root``.

    Returns the folder to pass as the reader's ``root`` (e.g. ``root/CUB_200_2011`` for CUB200).
    Files go to ``root/<RemoteFile.path>``; an archive is extracted once (:func:`extracted_marker`).
    A file already there (e.g. downloaded by hand) is verified against the registry's SHA-256 when
    one is known, and never deleted.

    Raises:
        ManualDownloadRequired: a file that cannot be downloaded automatically is not there yet; the
            message says where to get each such file and the exact path to save it at.
        DownloadError, ChecksumMismatchError, UnsafeArchiveError: see :func:`download`, :func:`safe_extract`.
    """
    source = dataset_source(name)
    root = Path(root).expanduser().absolute()
    pending = [file for file in source.files if not _is_done(root, file)]
    manual = [file for file in pending if file.url is None and not (root / file.path).exists()]
    if manual:
        raise ManualDownloadRequired(manual_instructions(source, root, manual))
    for file in pending:
        destination = root / file.path
        if destination.exists():
            if file.sha256 is not None:
                verify_sha256(destination, file.sha256)
        else:
            try:
                download(file.url, destination, file.sha256, progress=progress)  # type: ignore[arg-type]
            except DownloadError as exc:
                if isinstance(exc, DownloadInterrupted):
                    raise DownloadInterrupted(f"{exc}. Run the same command again to resume.") from exc
                raise DownloadError(
                    f"{exc}\nYou can also download it yourself from {file.manual} and save it as "
                    f"{destination}, then run the same command again."
                ) from exc
        if file.extract_to is not None:
            safe_extract(destination, root / file.extract_to)
            extracted_marker(destination).touch()
    folder = root / source.folder
    if not folder.is_dir():
        markers = [str(extracted_marker(root / file.path)) for file in source.files if file.extract_to]
        raise FetchError(
            f"{source.title}: {folder} does not exist although the archives count as extracted. If you "
            f"deleted it, delete {' and '.join(markers)} and run again; otherwise the archive's layout is "
            "not the expected one (see data/README.md)."
        )
    return folder


def _is_done(root: Path, file: RemoteFile) -> bool:
    if file.extract_to is not None:
        return extracted_marker(root / file.path).exists()
    return (root / file.path).exists() and file.sha256 is None


def manual_instructions(source: DatasetSource, root: Path, files: list[RemoteFile]) -> str:
    """Step-by-step text for the files of ``source`` that must be downloaded by hand."""
    reason = f" ({source.note})" if source.note else ""
    lines = [
        f"{source.title} cannot be downloaded automatically{reason}.",
        "Download these files by hand and save each one at exactly the path given:",
    ]
    for number, file in enumerate(files, start=1):
        size = "" if file.size is None else f" ({file.size / 2**30:.1f} GiB, {file.size:,} bytes)"
        lines += [
            f"  {number}. {PurePosixPath(file.path).name}{size}",
            f"     from:    {file.manual}",
            f"     save as: {root / file.path}",
        ]
    splits = " | ".join(f'"{split}"' for split in source.splits)
    lines += [
        f"Then run `python -m mpn_tutorial fetch {source.name} --root {root}` again: it checks the files "
        "(SHA-256 where known) and extracts the archives. The readers then take",
        f'  {source.reader}(root="{root / source.folder}", split={splits})',
        f"Licence: {source.licence}. Details: data/README.md and {source.homepage}",
    ]
    return "\n".join(lines)
