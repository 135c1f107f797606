"""The four benchmarks as data: their files, where they come from, and the folder each reader takes.

Readers (``benchmarks.py``) look up folder names here for their messages; the downloader
(``fetch.py``) looks up addresses and checksums. Neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpn_tutorial.errors import UsageError


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset release.

    Attributes:
        path: where the file goes, relative to the fetch root (POSIX separators).
        url: direct download address; None when it must be downloaded by hand.
        sha256: expected SHA-256 (hex); None when no trustworthy published value is known.
        size: size in bytes, for messages only (None when unknown).
        extract_to: folder (relative to the fetch root) to extract the archive into; None: used as it is.
        manual: where to get the file by hand (also the fallback when ``url`` fails).
    """

    path: str
    url: str | None = None
    sha256: str | None = None
    size: int | None = None
    extract_to: str | None = None
    manual: str = ""


@dataclass(frozen=True)
class DatasetSource:
    """A benchmark: its files, and the folder (relative to the fetch root) its reader takes as ``root``."""

    name: str
    title: str
    reader: str
    splits: tuple[str, ...]
    folder: str
    homepage: str
    licence: str
    files: tuple[RemoteFile, ...]
    note: str = ""


DATASETS: dict[str, DatasetSource] = {
    "cub": DatasetSource(
        name="cub",
        title="CUB-200-2011",
        reader="CUB200",
        splits=("train", "test"),
        folder="CUB_200_2011",
        homepage="https://www.vision.caltech.edu/datasets/cub_200_2011/",
        licence="research use (Caltech); the images come from Flickr, copyrights with their photographers",
        files=(
            RemoteFile(
                path="CUB_200_2011.tgz",
                url="https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
                # The value published in TensorFlow Datasets' and torchvision's checksum tables for
                # this archive (MD5 97eceeb196236b17998738112f37df78 in older loaders).
                sha256="0c685df5597a8b24909f6a7c9db6d11e008733779a671760afef78feb49bf081",
                size=1_150_585_339,
                extract_to=".",  # the archive holds CUB_200_2011/ (and a stray attributes.txt)
                manual="https://data.caltech.edu/records/65de6-vp158 (file CUB_200_2011.tgz)",
            ),
        ),
    ),
    "cars": DatasetSource(
        name="cars",
        title="Cars196 (Stanford Cars)",
        reader="Cars196",
        splits=("train", "test"),
        folder="cars196",
        homepage="https://ai.stanford.edu/~jkrause/cars/car_dataset.html",
        licence="research / non-commercial use (Stanford); images from the web, copyrights with their owners",
        files=(
            RemoteFile(
                path="cars196/car_ims.tgz",  # about 1.9 GB, size unknown
                extract_to="cars196",  # the archive holds car_ims/000001.jpg ... 016185.jpg
                manual=(
                    "the 'all images' release car_ims.tgz (16,185 images; "
                    "MD5 d5c8f0aa497503f355e17dc7886c3f14), once at "
                    "http://ai.stanford.edu/~jkrause/car196/car_ims.tgz; that link is dead, so use a mirror "
                    "you trust (not the train/test-split cars_train.tgz / cars_test.tgz)"
                ),
            ),
            RemoteFile(
                path="cars196/cars_annos.mat",
                manual=(
                    "cars_annos.mat (annotations of all 16,185 images; "
                    "MD5 b407c6086d669747186bd1d764ff9dbc), once at "
                    "http://ai.stanford.edu/~jkrause/car196/cars_annos.mat; use a mirror you trust"
                ),
            ),
        ),
        note="the original Stanford download links no longer work",
    ),
    "sop": DatasetSource(
        name="sop",
        title="Stanford Online Products",
        reader="StanfordOnlineProducts",
        splits=("train", "test"),
        folder="Stanford_Online_Products",
        homepage="https://cvgl.stanford.edu/projects/lifted_struct/",
        licence="research use (Stanford CVGL); product photos from eBay, copyrights with their owners",
        files=(
            RemoteFile(
                path="Stanford_Online_Products.zip",
                # The HTTP face of ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip: HTTP
                # lets an interrupted 3 GB download resume (FTP through urllib cannot).
                url="http://ftp.cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip",
                # TensorFlow Datasets' checksum table for the same archive.
                sha256="b04fa78210e69fab050ce73939550e1cd0f96890bdd98ec9fee732c3b756ef48",
                size=3_083_860_082,
                extract_to=".",  # the archive holds Stanford_Online_Products/
                manual=(
                    "ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip (also linked from "
                    "https://github.com/rksltnl/Deep-Metric-Learning-CVPR16)"
                ),
            ),
        ),
    ),
    "inshop": DatasetSource(
        name="inshop",
        title="In-Shop Clothes Retrieval (DeepFashion)",
        reader="InShop",
        splits=("train", "query", "gallery"),
        folder="inshop",
        homepage="https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html",
        licence=(
            "non-commercial research and educational use only (CUHK MMLab DeepFashion agreement); "
            "the images' copyrights are not the authors'"
        ),
        files=(
            RemoteFile(
                path="inshop/Img/img.zip",
                extract_to="inshop/Img",  # the zip holds img/MEN/... and img/WOMEN/...
                manual=(
                    "Img/img.zip (52,712 images, 256x256; not img_highres.zip) in the Google Drive folder "
                    "'In-shop Clothes Retrieval Benchmark' linked from "
                    "https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html"
                ),
            ),
            RemoteFile(
                path="inshop/Eval/list_eval_partition.txt",
                manual="Eval/list_eval_partition.txt in the same Google Drive folder",
            ),
        ),
        note="Google Drive needs a browser, and the dataset's agreement must be accepted first",
    ),
}


def dataset_source(name: str) -> DatasetSource:
    """The registry entry for ``name`` (cub, cars, sop, inshop)."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UsageError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None
