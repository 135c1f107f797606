"""Downloading, verifying and extracting benchmarks, against a local HTTP server (no network)."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import random
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from mpn_tutorial.data.benchmarks import CUB200, InShop
from mpn_tutorial.errors import UsageError
from mpn_tutorial.tools import fetch, registry
from mpn_tutorial.tools.cli import main
from mpn_tutorial.tools.fetch import (
    ChecksumMismatchError,
    DownloadError,
    DownloadInterrupted,
    FetchError,
    ManualDownloadRequired,
    UnsafeArchiveError,
    download,
    fetch_dataset,
    partial_path,
    safe_extract,
)

PAYLOAD = random.Random(0).randbytes(300_000)
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()

# ------------------------------------------------------------------------------------------------
# A local HTTP server that understands Range and can be told to drop a connection mid-file
# ------------------------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # the name http.server dispatches GET requests to
        server: FileServer = self.server  # type: ignore[assignment]
        range_header = self.headers.get("Range")
        server.requests.append((self.path, range_header))
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        if range_header and server.supports_range:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if server.drop_after is not None:
            # Announce the full length, send part of it, hang up: a broken connection mid-file.
            cut, server.drop_after = server.drop_after, None
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)

    def log_message(self, format, *args) -> None:  # keep the test output quiet
        pass


class FileServer(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.supports_range = True
        self.drop_after: int | None = None  # cut the next response after this many bytes

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture
def server():
    server = FileServer()
    server.files["/archive.bin"] = PAYLOAD
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


# ------------------------------------------------------------------------------------------------
# download()
# ------------------------------------------------------------------------------------------------


def test_download_writes_the_verified_file_and_leaves_no_partial(server, tmp_path):
    destination = tmp_path / "sub" / "archive.bin"
    assert download(server.url("/archive.bin"), destination, PAYLOAD_SHA256) == destination
    assert destination.read_bytes() == PAYLOAD
    assert not partial_path(destination).exists()


def test_interrupted_download_keeps_the_partial_file_and_no_final_file(server, tmp_path):
    destination = tmp_path / "archive.bin"
    server.drop_after = 100_000
    with pytest.raises(DownloadInterrupted, match="interrupted after 100,000 of 300,000 bytes"):
        download(server.url("/archive.bin"), destination, PAYLOAD_SHA256, retries=0)
    assert not destination.exists()
    assert partial_path(destination).read_bytes() == PAYLOAD[:100_000]


def test_next_call_resumes_an_interrupted_download_with_a_range_request(server, tmp_path):
    destination = tmp_path / "archive.bin"
    server.drop_after = 100_000
    with pytest.raises(DownloadInterrupted):
        download(server.url("/archive.bin"), destination, PAYLOAD_SHA256, retries=0)
    download(server.url("/archive.bin"), destination, PAYLOAD_SHA256, retries=0)
    assert server.requests[-1] == ("/archive.bin", "bytes=100000-")
    assert destination.read_bytes() == PAYLOAD
    assert not partial_path(destination).exists()


def test_retries_resume_an_interrupted_download_within_one_call(server, tmp_path):
    destination = tmp_path / "archive.bin"
    server.drop_after = 123_456
    download(server.url("/archive.bin"), destination, PAYLOAD_SHA256, retries=1)
    assert [range_header for _, range_header in server.requests] == [None, "bytes=123456-"]
    assert destination.read_bytes() == PAYLOAD


def test_server_that_ignores_range_makes_the_download_start_over(server, tmp_path):
    destination = tmp_path / "archive.bin"
    partial_path(destination).write_bytes(b"stale bytes from another attempt")
    server.supports_range = False
    download(server.url("/archive.bin"), destination, PAYLOAD_SHA256)
    assert destination.read_bytes() == PAYLOAD


def test_partial_file_that_is_already_whole_is_verified_and_renamed(server, tmp_path):
    destination = tmp_path / "archive.bin"
    partial_path(destination).write_bytes(PAYLOAD)  # the server will answer 416
    download(server.url("/archive.bin"), destination, PAYLOAD_SHA256)
    assert destination.read_bytes() == PAYLOAD


def test_partial_file_longer_than_the_remote_file_is_discarded_and_downloaded_again(server, tmp_path):
    destination = tmp_path / "archive.bin"
    partial_path(destination).write_bytes(PAYLOAD + b"junk")
    download(server.url("/archive.bin"), destination, PAYLOAD_SHA256, retries=1)
    assert destination.read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_the_download_and_names_both_hashes(server, tmp_path):
    destination = tmp_path / "archive.bin"
    wrong = "0" * 64
    with pytest.raises(ChecksumMismatchError) as error:
        download(server.url("/archive.bin"), destination, wrong)
    assert wrong in str(error.value) and PAYLOAD_SHA256 in str(error.value)
    assert not destination.exists() and not partial_path(destination).exists()


def test_http_error_names_the_url_and_the_status(server, tmp_path):
    with pytest.raises(DownloadError, match=r"/missing\.bin failed: HTTP 404"):
        download(server.url("/missing.bin"), tmp_path / "missing.bin")
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_is_a_download_error(tmp_path):
    with pytest.raises(DownloadError, match="cannot reach"):
        download("http://127.0.0.1:9/archive.bin", tmp_path / "archive.bin", timeout=5)


def test_an_existing_destination_is_not_downloaded_again(server, tmp_path):
    destination = tmp_path / "archive.bin"
    destination.write_bytes(b"already here")
    download(server.url("/archive.bin"), destination, PAYLOAD_SHA256)
    assert server.requests == [] and destination.read_bytes() == b"already here"


# ------------------------------------------------------------------------------------------------
# safe_extract()
# ------------------------------------------------------------------------------------------------


def add_file(tar: tarfile.TarFile, name: str, data: bytes = b"data") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_link(tar: tarfile.TarFile, name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    tar.addfile(info)


def make_tar(path: Path, build) -> Path:
    mode = "w:gz" if path.name.endswith(("gz", "tgz")) else "w"
    with tarfile.open(path, mode) as tar:
        build(tar)
    return path


def make_zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16) | 0x20  # S_IFLNK in the Unix mode bits
            archive.writestr(info, target)
    return path


def files_under(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*")}


@pytest.mark.parametrize("name", ["good.tgz", "good.tar.gz", "good.tar"])
def test_a_good_tar_archive_extracts_its_files_and_folders(tmp_path, name):
    def build(tar):
        add_file(tar, "CUB_200_2011/images.txt", b"1 a/b.jpg\n")
        add_file(tar, "CUB_200_2011/images/a/b.jpg", b"jpeg")
        add_link(tar, "CUB_200_2011/latest.jpg", "images/a/b.jpg")  # a link inside the target is fine

    target = safe_extract(make_tar(tmp_path / name, build), tmp_path / "out")
    assert (target / "CUB_200_2011" / "images.txt").read_bytes() == b"1 a/b.jpg\n"
    assert (target / "CUB_200_2011" / "images" / "a" / "b.jpg").read_bytes() == b"jpeg"
    assert (target / "CUB_200_2011" / "latest.jpg").read_bytes() == b"jpeg"


def test_a_good_zip_archive_extracts_its_files_and_folders(tmp_path):
    archive = make_zip(
        tmp_path / "good.zip",
        {
            "Stanford_Online_Products/Ebay_train.txt": b"header\n",
            "Stanford_Online_Products/bike_final/1.JPG": b"x",
        },
    )
    target = safe_extract(archive, tmp_path / "out")
    assert (target / "Stanford_Online_Products" / "Ebay_train.txt").read_bytes() == b"header\n"
    assert (target / "Stanford_Online_Products" / "bike_final" / "1.JPG").read_bytes() == b"x"


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda tar: add_file(tar, "../evil.txt"), "resolves to"),
        (lambda tar: add_file(tar, "dataset/../../evil.txt"), "resolves to"),
        (lambda tar: add_file(tar, "/tmp/evil.txt"), "absolute path"),
        (lambda tar: add_link(tar, "dataset/link", "../../evil.txt"), "links to"),
        (lambda tar: add_link(tar, "dataset/link", "/etc/passwd"), "links to the absolute path"),
        (lambda tar: add_link(tar, "dataset/hard", "../secret.txt", tarfile.LNKTYPE), "links to"),
    ],
    ids=["parent", "nested-parent", "absolute", "symlink-out", "symlink-absolute", "hardlink-out"],
)
def test_tar_member_escaping_the_target_is_refused_and_nothing_lands_outside(tmp_path, build, reason):
    (tmp_path / "secret.txt").write_text("outside")

    def hostile(tar):
        add_file(tar, "dataset/ok.txt")
        build(tar)
        add_file(tar, "dataset/after.txt")

    archive = make_tar(tmp_path / "hostile.tgz", hostile)
    target = tmp_path / "deep" / "out"
    before = files_under(tmp_path)
    with pytest.raises(UnsafeArchiveError, match=reason):
        safe_extract(archive, target)
    outside = files_under(tmp_path) - before - {"deep", "deep/out"}
    assert {path for path in outside if not path.startswith("deep/out/")} == set()
    assert not (target / "dataset" / "after.txt").exists()  # nothing further extracted
    assert not (target / "dataset" / "link").is_symlink() and not (target / "dataset" / "hard").exists()


@pytest.mark.parametrize(
    ("members", "symlinks", "reason"),
    [
        ({"../evil.txt": b"x"}, {}, "resolves to"),
        ({"/evil.txt": b"x"}, {}, "absolute path"),
        ({}, {"dataset/link": "../../evil.txt"}, "links to"),
    ],
    ids=["parent", "absolute", "symlink-out"],
)
def test_zip_member_escaping_the_target_is_refused_before_anything_is_written(
    tmp_path, members, symlinks, reason
):
    archive = make_zip(tmp_path / "hostile.zip", {"dataset/ok.txt": b"fine", **members}, symlinks)
    target = tmp_path / "out"
    before = files_under(tmp_path)
    with pytest.raises(UnsafeArchiveError, match=reason):
        safe_extract(archive, target)
    assert files_under(tmp_path) - before <= {"out"}  # not even dataset/ok.txt was written


@pytest.mark.parametrize("name", ["broken.tgz", "broken.zip"])
def test_damaged_archive_is_reported_as_a_fetch_error(tmp_path, name):
    good = make_zip(tmp_path / "good.zip", {"a.txt": b"x" * 1000})
    if name.endswith(".tgz"):
        good = make_tar(tmp_path / "good.tgz", lambda tar: add_file(tar, "a.txt", b"x" * 1000))
    (tmp_path / name).write_bytes(good.read_bytes()[:-40])  # truncated
    with pytest.raises(FetchError, match="not a readable archive"):
        safe_extract(tmp_path / name, tmp_path / "out")


def test_unknown_archive_type_is_rejected(tmp_path):
    (tmp_path / "data.rar").write_bytes(b"")
    with pytest.raises(FetchError, match="unknown archive type"):
        safe_extract(tmp_path / "data.rar", tmp_path / "out")


# ------------------------------------------------------------------------------------------------
# fetch_dataset() and the command line
# ------------------------------------------------------------------------------------------------


def fake_cub_archive(path: Path) -> bytes:
    """A .tgz laid out like CUB_200_2011.tgz, with one image of class 1 and one of class 101."""
    with tarfile.open(path, "w:gz") as tar:
        add_file(tar, "attributes.txt", b"1 has_bill_shape::curved\n")
        add_file(tar, "CUB_200_2011/images.txt", b"1 001.A/a.jpg\n2 101.B/b.jpg\n")
        add_file(tar, "CUB_200_2011/image_class_labels.txt", b"1 1\n2 101\n")
        for name in ("001.A/a.jpg", "101.B/b.jpg"):
            image = io.BytesIO()
            Image.new("RGB", (8, 8), (90, 30, 200)).save(image, "JPEG")
            add_file(tar, f"CUB_200_2011/images/{name}", image.getvalue())
    return path.read_bytes()


@pytest.fixture
def local_cub(server, tmp_path, monkeypatch):
    """Point the registry's CUB entry at the local server; returns the archive's SHA-256."""
    data = fake_cub_archive(tmp_path / "served.tgz")
    server.files["/CUB_200_2011.tgz"] = data
    digest = hashlib.sha256(data).hexdigest()
    entry = registry.DATASETS["cub"]
    file = dataclasses.replace(entry.files[0], url=server.url("/CUB_200_2011.tgz"), sha256=digest)
    monkeypatch.setitem(registry.DATASETS, "cub", dataclasses.replace(entry, files=(file,)))
    return digest


def test_fetch_downloads_verifies_and_extracts_into_the_reader_root(server, tmp_path, local_cub):
    folder = fetch_dataset("cub", tmp_path / "data")
    assert folder == tmp_path / "data" / "CUB_200_2011"
    assert len(CUB200(folder, "train")) == 1 and len(CUB200(folder, "test")) == 1
    assert fetch.extracted_marker(tmp_path / "data" / "CUB_200_2011.tgz").exists()


def test_fetch_a_second_time_neither_downloads_nor_extracts_again(server, tmp_path, local_cub):
    fetch_dataset("cub", tmp_path / "data")
    (tmp_path / "data" / "CUB_200_2011.tgz").unlink()  # allowed once extracted
    requests = len(server.requests)
    assert fetch_dataset("cub", tmp_path / "data") == tmp_path / "data" / "CUB_200_2011"
    assert len(server.requests) == requests


def test_manual_dataset_says_which_file_to_download_from_where_and_where_to_put_it(tmp_path):
    with pytest.raises(ManualDownloadRequired) as error:
        fetch_dataset("inshop", tmp_path)
    message = str(error.value)
    assert f"save as: {tmp_path / 'inshop' / 'Img' / 'img.zip'}" in message
    assert f"save as: {tmp_path / 'inshop' / 'Eval' / 'list_eval_partition.txt'}" in message
    assert "drive.google" in message.lower() or "Google Drive" in message
    assert f'InShop(root="{tmp_path / "inshop"}"' in message
    assert "non-commercial" in message


def test_manually_placed_files_are_extracted_and_the_reader_opens_them(tmp_path):
    root = tmp_path / "data" / "inshop"
    image = io.BytesIO()
    Image.new("RGB", (8, 8)).save(image, "JPEG")
    names = [f"img/MEN/Denim/id_0000000{i}/01_1_front.jpg" for i in (1, 2, 3)]
    (root / "Img").mkdir(parents=True)
    make_zip(root / "Img" / "img.zip", {name: image.getvalue() for name in names})
    (root / "Eval").mkdir()
    rows = [
        f"{names[0]} id_00000001 train",
        f"{names[1]} id_00000002 query",
        f"{names[2]} id_00000002 gallery",
    ]
    (root / "Eval" / "list_eval_partition.txt").write_text(
        "3\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n"
    )
    assert fetch_dataset("inshop", tmp_path / "data") == root
    assert InShop(root, "query").labels.tolist() == InShop(root, "gallery").labels.tolist() == [0]


def test_a_manually_placed_archive_with_a_wrong_checksum_is_refused_and_kept(tmp_path):
    archive = tmp_path / "CUB_200_2011.tgz"
    archive.write_bytes(b"an html error page saved as .tgz")
    with pytest.raises(ChecksumMismatchError, match=registry.DATASETS["cub"].files[0].sha256):
        fetch_dataset("cub", tmp_path)
    assert archive.exists()  # never delete what the user put there


def test_unknown_dataset_name_is_the_users_mistake_and_lists_the_known_ones(tmp_path):
    with pytest.raises(UsageError, match="cub, cars, sop, inshop"):
        fetch_dataset("mnist", tmp_path)


def test_run_fetch_prints_manual_instructions_and_returns_2(tmp_path, capsys):
    code = main(["fetch", "cars", "--root", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 2
    assert str(tmp_path / "cars196" / "car_ims.tgz") in out and "cars_annos.mat" in out
    assert "Traceback" not in out + err


def test_run_fetch_reports_a_failed_download_without_a_traceback_and_returns_1(
    server, tmp_path, local_cub, monkeypatch, capsys
):
    server.files["/CUB_200_2011.tgz"] = b"corrupted bytes"
    code = main(["fetch", "cub", "--root", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 1
    assert "SHA-256 mismatch" in err and local_cub in err
    assert "Traceback" not in out + err


def test_run_fetch_names_the_reader_root_and_returns_0(server, tmp_path, local_cub, capsys):
    code = main(["fetch", "cub", "--root", str(tmp_path)])
    out, _ = capsys.readouterr()
    assert code == 0
    assert f'CUB200(root="{tmp_path / "CUB_200_2011"}"' in out


def test_every_registry_entry_names_a_destination_and_a_way_to_get_each_file():
    for source in registry.DATASETS.values():
        for file in source.files:
            assert file.url or file.manual
            assert not Path(file.path).is_absolute() and ".." not in Path(file.path).parts
            assert file.sha256 is None or len(file.sha256) == 64
