"""Obtaining the four benchmarks: a resumable verified download, and an extraction that refuses
archive members escaping the target folder. What to download (addresses, checksums, folders) is in
``registry.py``; the command line that calls this module is in ``mpn_tutorial/__main__.py``.

``python -m mpn_tutorial fetch NAME --root DIR`` (NAME: cub, cars, sop, inshop) downloads, verifies
and extracts what can be downloaded, and otherwise prints exactly which file to download by hand,
from where, and where to save it; running the same command again then verifies and extracts it.
It ends by naming the folder to pass as the readers' ``root`` (see data/README.md).

Three guarantees, because benchmark archives are large (1-3 GB) and come from third parties:

* **Resumable.** Bytes go to ``<file>.partial``; an interrupted download resumes with an HTTP
  ``Range`` request instead of starting over.
* **Never a complete-looking bad file.** The final name appears only through an atomic rename after
  the SHA-256 matched; a mismatching download is deleted and the error names both hashes.
* **Safe extraction.** A member with an absolute path, a ``..`` that climbs out of the target, or a
  symbolic/hard link pointing outside it makes :func:`safe_extract` raise instead of writing there.

Only the standard library is used for HTTP (``urllib``), so fetching needs no extra dependency.
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
from pathlib import Path, PureWindowsPath

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
ProgressCallback = Callable[[int, int | None], None]  # (bytes so far, total bytes or None)


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (archives are larger than memory should hold)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str) -> None:
    """Raise :class:`ChecksumMismatchError` naming both hashes unless ``path`` hashes to ``expected``.

    The file is left in place: it may be the user's own download.
    """
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
    chunk_size: int = 1 << 20,
    *,
    retries: int = 3,
    timeout: float = 60.0,
    progress: ProgressCallback | None = None,
) -> Path:
    """Download ``url`` to ``destination`` with resume and checksum verification; returns ``destination``.

    Bytes are appended to ``destination + ".partial"``. If that file exists (an earlier call was
    interrupted) the request asks only for the rest (``Range: bytes=<size>-``); a server that
    ignores ranges sends the whole file, which then replaces the partial one. A connection that
    breaks mid-file is retried ``retries`` times, each retry resuming; after that
    :class:`DownloadInterrupted` is raised and the partial file is kept for the next call.

    When the transfer is complete the partial file is hashed: on a mismatch with ``sha256`` it is
    deleted and :class:`ChecksumMismatchError` names the expected and actual hashes; on a match
    (or when ``sha256`` is None) it is renamed to ``destination`` in one atomic step. So a file at
    ``destination`` is always complete, and an existing one is returned without downloading.

    Args:
        url: http(s) address.
        destination: final file path; its folder is created if needed.
        sha256: expected hex SHA-256, or None to skip verification.
        chunk_size: bytes read per network read.
        retries: how many times an interrupted transfer is resumed within this call.
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
            _transfer(url, partial, chunk_size, timeout, progress)
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


def _transfer(
    url: str, partial: Path, chunk_size: int, timeout: float, progress: ProgressCallback | None
) -> None:
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
                raise DownloadInterrupted(
                    f"{partial} was longer than {url} ({total} bytes); starting over"
                ) from exc
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
                    chunk = response.read(chunk_size)
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


def _interrupted(
    url: str, partial: Path, received: int, total: int | None, reason: object
) -> DownloadInterrupted:
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


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract a .tgz / .tar.gz / .tar / .zip archive into ``target``; returns ``target``.

    Every member is checked before it is written. :class:`UnsafeArchiveError` is raised (and
    nothing further extracted) for a member that

    * has an absolute path (``/etc/passwd``, ``C:\\x``),
    * resolves outside ``target`` (``../evil``, or a path through a link already on disk),
    * is a symbolic or hard link whose target lies outside ``target`` (or is absolute),
    * is a device file or FIFO (tar only).

    A zip archive is checked completely before anything is written (its member list is at the
    end of the file); a tar archive is a stream, so members before the offending one are already
    extracted (all of them inside ``target``). Python's ``zipfile`` writes a zip symlink member as a
    small file holding the link text, so no zip link is ever followed; escaping ones are refused all
    the same, since they betray a hostile archive.
    """
    archive, target = Path(archive), Path(target)
    name = archive.name.lower()
    if not name.endswith((".tgz", ".tar.gz", ".tar", ".zip")):
        raise FetchError(
            f"cannot extract {archive}: unknown archive type (expected .tgz, .tar.gz, .tar or .zip)"
        )
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


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _is_absolute(name: str) -> bool:
    return name.startswith(("/", "\\")) or bool(PureWindowsPath(name).drive)


def _checked_destination(archive: Path, name: str, root: Path) -> Path:
    """Where member ``name`` lands under ``root`` (already resolved); raises if it escapes."""
    if _is_absolute(name):
        raise _refuse(archive, name, root, "has an absolute path")
    # resolve() also follows links already on disk, so a path through an earlier extracted link
    # (``link/../../x``) is judged by where it really goes.
    destination = (root / name.replace("\\", "/")).resolve()
    if not _inside(destination, root):
        raise _refuse(archive, name, root, f"resolves to {destination}")
    return destination


def _check_link(archive: Path, name: str, link: str, base: Path, root: Path) -> None:
    """Refuse a link whose target ``link`` (relative to ``base``) is absolute or leaves ``root``."""
    if _is_absolute(link):
        raise _refuse(archive, name, root, f"links to the absolute path {link!r}")
    resolved = (base / link.replace("\\", "/")).resolve()
    if not _inside(resolved, root):
        raise _refuse(archive, name, root, f"links to {resolved}")


def _extract_tar(archive: Path, target: Path) -> None:
    root = target.resolve()
    # Python >= 3.12 (and recent 3.10/3.11 patch releases) can also filter for us; we keep our own
    # checks so older Pythons are safe and the errors say what happened.
    filter_argument = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            _checked_destination(archive, member.name, root)
            if member.issym():
                # A symlink's target is relative to the folder holding the link.
                _check_link(archive, member.name, member.linkname, (root / member.name).parent, root)
            elif member.islnk():
                # A hard link's target is another member, named relative to the archive root.
                _check_link(archive, member.name, member.linkname, root, root)
            elif not (member.isfile() or member.isdir()):
                raise _refuse(archive, member.name, root, "is a device file or FIFO, which has no place")
            tar.extract(member, root, set_attrs=False, **filter_argument)


def _is_zip_symlink(info: zipfile.ZipInfo) -> bool:
    return (info.external_attr >> 16) & 0o170000 == 0o120000  # S_IFLNK in the Unix mode bits


def _extract_zip(archive: Path, target: Path) -> None:
    root = target.resolve()
    with zipfile.ZipFile(archive) as zip_file:
        members = zip_file.infolist()
        for info in members:  # check everything first: nothing is written from a hostile zip
            destination = _checked_destination(archive, info.filename, root)
            if _is_zip_symlink(info):
                link = zip_file.read(info).decode("utf-8", errors="replace")
                _check_link(archive, info.filename, link, destination.parent, root)
        for info in members:
            zip_file.extract(info, root)


# --------------------------------------------------------------------------------------------
# Fetching a dataset
# --------------------------------------------------------------------------------------------


def extracted_marker(archive: str | os.PathLike) -> Path:
    """The empty file written next to ``archive`` once it has been extracted completely.

    It lets a repeated fetch skip work, and lets you delete the archive to save space afterwards.
    Delete the marker to force a new extraction.
    """
    archive = Path(archive)
    return archive.with_name(archive.name + ".extracted")


def fetch_dataset(
    name: str, root: str | os.PathLike = "data", progress: ProgressCallback | None = None
) -> Path:
    """Download (where possible), verify and extract dataset ``name`` under ``root``.

    Returns the folder to pass as the reader's ``root`` (e.g. ``root/CUB_200_2011`` for CUB200).
    Files are placed at ``root/<RemoteFile.path>``; an archive is extracted once (see
    :func:`extracted_marker`). A file that is already there (e.g. downloaded by hand) is verified
    against the registry's SHA-256 when one is known, and never deleted.

    Raises:
        ManualDownloadRequired: some file cannot be downloaded automatically and is not there yet;
            the message lists each such file, where to get it, and the exact path to save it at.
        DownloadError, ChecksumMismatchError, UnsafeArchiveError: see :func:`download` and
            :func:`safe_extract`.
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


def _format_size(size: int | None) -> str:
    return "" if size is None else f" ({size / 2**30:.1f} GiB, {size:,} bytes)"


def manual_instructions(source: DatasetSource, root: Path, files: list[RemoteFile]) -> str:
    """Step-by-step text for the files of ``source`` that must be downloaded by hand."""
    reason = f" ({source.note})" if source.note else ""
    lines = [
        f"{source.title} cannot be downloaded automatically{reason}.",
        "Download these files by hand and save each one at exactly the path given:",
    ]
    for number, file in enumerate(files, start=1):
        lines += [
            f"  {number}. {file.name}{_format_size(file.size)}",
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
