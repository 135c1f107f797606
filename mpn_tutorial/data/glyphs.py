"""The embedded offline dataset: characters rendered from the fonts that ship with matplotlib.

One class per character; its images are the character drawn in the 16 faces of DejaVu Sans / Sans
Mono / Serif and STIXGeneral, with random geometric and stroke augmentation. As in the benchmarks,
the classes are split in two disjoint halves: retrieval is evaluated on classes never seen in training.

The classes are chosen by rendering, not by a hand-written list:

1. characters of a few Unicode blocks that at least ``MIN_FACES`` faces have in their character map
   (glyph index != 0, so a character is never drawn as the font's "missing glyph" box);
2. renders with almost no ink, or that leave the canvas, are dropped;
3. characters that look the same are one class: in some face that has both, their 32 px renders
   differ by less than ``DUPLICATE_THRESHOLD`` (sum of absolute pixel differences over the sum of the
   pixel-wise maximum, i.e. relative to the ink). That merges Latin A, Greek Alpha and Cyrillic A,
   and keeps O / 0 / o apart.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
import warnings
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mpn_tutorial.data.splits import split_classes
from mpn_tutorial.errors import MissingFileError, UsageError
from mpn_tutorial.tools.atomic import write_atomically

SPLITS = ("train", "val", "test")

FONT_FILES = tuple(
    f"{family}{style}.ttf"
    for family, styles in (
        ("DejaVuSans", ("", "-Bold", "-Oblique", "-BoldOblique")),
        ("DejaVuSansMono", ("", "-Bold", "-Oblique", "-BoldOblique")),
        ("DejaVuSerif", ("", "-Bold", "-Italic", "-BoldItalic")),
        ("STIXGeneral", ("", "Bol", "Italic", "BolIta")),
    )
    for style in styles
)
UNICODE_RANGES = (
    (0x0021, 0x007E),  # Basic Latin: letters, digits, punctuation
    (0x00A1, 0x00BF),  # Latin-1 symbols
    (0x0370, 0x03FF),  # Greek
    (0x0400, 0x04FF),  # Cyrillic
    (0x2190, 0x21FF),  # arrows
    (0x2200, 0x22FF),  # mathematical operators
    (0x25A0, 0x25FF),  # geometric shapes
)
MIN_FACES = 8
DUPLICATE_THRESHOLD = 0.05
MIN_INK = 30.0  # summed intensity on the 64 px canvas (a full pixel is 1.0)
MIN_INK_KEPT_BY_EROSION = 0.4
CANVAS = 64  # glyphs are rendered and augmented at 64 px, then reduced to image_size
FONT_SIZE = 40


@dataclass(frozen=True)
class Augmentation:
    """Random augmentation of one rendered glyph (ranges of uniform draws)."""

    rotation_degrees: float = 20.0
    scale: tuple[float, float] = (0.75, 1.15)
    shear: float = 0.3
    shift_pixels: float = 4.0  # on the 64 px canvas
    stroke_change_probability: float = 0.67  # half of it dilation (thicker), half erosion (thinner)
    noise_std: float = 0.15


def font_paths() -> list[Path]:
    """The 16 font files used, inside matplotlib's data folder."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = [folder / name for name in FONT_FILES]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise MissingFileError(
            f"matplotlib's font folder {folder} lacks {missing}; reinstall matplotlib "
            "(pip install --force-reinstall matplotlib)"
        )
    return paths


def render_character(font, character: str, canvas: int = CANVAS) -> np.ndarray:
    """White-on-black render of one character, ``(canvas, canvas) float32`` in [0, 1].

    The anchor is the middle of the advance width and of the face's ascender-descender span, so
    the vertical position of a glyph (a comma sits low, an apostrophe high) is kept.
    """
    from PIL import Image, ImageDraw

    image = Image.new("L", (canvas, canvas), 0)
    ImageDraw.Draw(image).text((canvas / 2, canvas / 2), character, fill=255, font=font, anchor="mm")
    return np.asarray(image, dtype=np.float32) / 255.0


def render_missing_glyph(font, canvas: int = CANVAS) -> np.ndarray:
    """The face's "missing glyph" (.notdef) shape, drawn for a private-use code point."""
    return render_character(font, "\ue000", canvas)


def character_maps() -> list[dict[int, int]]:
    """Per face: code point -> glyph index (0 means the face lacks the character)."""
    from matplotlib import ft2font

    return [ft2font.FT2Font(str(path)).get_charmap() for path in font_paths()]


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise ``sum|a - b| / sum max(a, b)`` between rows of ``a (M, P)`` and ``b (N, P)`` -> (M, N)."""
    difference = torch.cdist(a, b, p=1)
    # sum max(a, b) = (sum a + sum b + sum |a - b|) / 2, without an (M, N, P) intermediate
    union = (a.sum(dim=1)[:, None] + b.sum(dim=1)[None, :] + difference) / 2
    return difference / union.clamp_min(1e-8)


def _reduce(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, S, S) -> (N, size, size) by area averaging."""
    return F.interpolate(images[:, None], size=(size, size), mode="area")[:, 0]


@dataclass(frozen=True)
class GlyphClass:
    """One class: a representative character, the look-alikes merged into it, the faces that have it."""

    codepoint: int
    merged: tuple[int, ...]
    faces: tuple[int, ...]


@lru_cache(maxsize=2)
def glyph_classes(image_size: int = 32) -> tuple[tuple[GlyphClass, ...], np.ndarray]:
    """Choose the classes by rendering (see module docstring).

    Returns the classes (sorted by code point) and the clean renders ``(num_classes, num_faces,
    CANVAS, CANVAS) float32`` (zero where a face lacks the character).
    """
    from PIL import ImageFont

    paths = font_paths()
    fonts = [ImageFont.truetype(str(p), FONT_SIZE) for p in paths]
    maps = character_maps()
    missing_shapes = [torch.from_numpy(render_missing_glyph(f)).flatten() for f in fonts]

    candidates: dict[int, dict[int, np.ndarray]] = {}
    for low, high in UNICODE_RANGES:
        for codepoint in range(low, high + 1):
            character = chr(codepoint)
            # Letters, numbers, punctuation, symbols; no precomposed accented letters (their accents
            # vanish at 32 px and would make near-duplicates of the base letter).
            if unicodedata.category(character)[0] not in "LNPS" or unicodedata.decomposition(character):
                continue
            faces = [i for i, cmap in enumerate(maps) if cmap.get(codepoint, 0) != 0]
            if len(faces) < MIN_FACES:
                continue
            renders = {i: render_character(fonts[i], character) for i in faces}
            if any(_unusable(r, missing_shapes[i]) for i, r in renders.items()):
                continue
            candidates[codepoint] = renders

    codepoints = sorted(candidates)
    parent = {c: c for c in codepoints}

    def root(c: int) -> int:
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    for face in range(len(paths)):
        having = [c for c in codepoints if face in candidates[c]]
        small = _reduce(torch.from_numpy(np.stack([candidates[c][face] for c in having])), image_size)
        flat = small.flatten(1)
        distance = relative_difference(flat, flat)
        rows, cols = torch.nonzero(distance < DUPLICATE_THRESHOLD, as_tuple=True)
        for i, j in zip(rows.tolist(), cols.tolist()):
            a, b = root(having[i]), root(having[j])
            if a != b:
                parent[max(a, b)] = min(a, b)

    groups: dict[int, list[int]] = {}
    for c in codepoints:
        groups.setdefault(root(c), []).append(c)
    classes = []
    renders = np.zeros((len(groups), len(paths), CANVAS, CANVAS), dtype=np.float32)
    for index, (representative, members) in enumerate(sorted(groups.items())):
        faces = tuple(sorted(candidates[representative]))
        classes.append(GlyphClass(representative, tuple(members), faces))
        for face in faces:
            renders[index, face] = candidates[representative][face]
    return tuple(classes), renders


def _unusable(render: np.ndarray, missing_shape: torch.Tensor) -> bool:
    """Too little ink, touching the canvas border, or the face's missing-glyph box."""
    if render.sum() < MIN_INK:
        return True
    border = np.concatenate([render[0], render[-1], render[:, 0], render[:, -1]])
    if border.max() > 0.5:
        return True
    difference = relative_difference(torch.from_numpy(render).flatten()[None], missing_shape[None])
    return bool(difference.item() < DUPLICATE_THRESHOLD)


def _affine_matrices(count: int, augmentation: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """Random (count, 2, 3) matrices for ``affine_grid`` (output -> input coordinates, in [-1, 1])."""

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64)

    angle = torch.deg2rad(uniform(-augmentation.rotation_degrees, augmentation.rotation_degrees))
    scale = uniform(*augmentation.scale)
    shear = uniform(-augmentation.shear, augmentation.shear)
    shift = 2 * augmentation.shift_pixels / CANVAS
    tx, ty = uniform(-shift, shift), uniform(-shift, shift)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # forward map A = R(angle) @ Shear @ scale; affine_grid needs the inverse (output -> input)
    forward = torch.zeros(count, 2, 2, dtype=torch.float64)
    forward[:, 0, 0] = cos * scale
    forward[:, 0, 1] = (cos * shear - sin) * scale
    forward[:, 1, 0] = sin * scale
    forward[:, 1, 1] = (sin * shear + cos) * scale
    inverse = torch.linalg.inv(forward)
    translation = torch.stack([tx, ty], dim=1)[:, :, None]
    return torch.cat([inverse, -inverse @ translation], dim=2).float()


def generate_glyphs(
    seed: int = 0,
    image_size: int = 32,
    images_per_class: int = 48,
    augmentation: Augmentation = Augmentation(),
) -> dict[str, np.ndarray]:
    """Render the whole dataset (not split: :func:`mpn_tutorial.data.splits.split_classes` draws that).

    Returns ``images`` (N = num_classes * images_per_class, image_size, image_size) uint8, ``labels``
    (N,) int64 global class index, ``faces`` (N,) int64 face used per image and ``codepoints``
    (num_classes,) int64, the representative character of each class.
    """
    classes, renders = glyph_classes(image_size)
    generator = torch.Generator().manual_seed(seed)

    # Which face each image uses: cycle through the class's faces in a random order, so every
    # face appears about equally often within a class.
    base_face = []
    for glyph_class in classes:
        order = torch.randperm(len(glyph_class.faces), generator=generator).tolist()
        base_face += [glyph_class.faces[order[k % len(order)]] for k in range(images_per_class)]
    labels = torch.arange(len(classes)).repeat_interleave(images_per_class)
    faces = torch.tensor(base_face)
    count = len(labels)

    matrices = _affine_matrices(count, augmentation, generator)
    stroke_draw = torch.rand(count, generator=generator)
    half = augmentation.stroke_change_probability / 2
    noise = torch.randn(count, image_size, image_size, generator=generator) * augmentation.noise_std

    all_renders = torch.from_numpy(renders)
    images = torch.empty(count, image_size, image_size, dtype=torch.uint8)
    chunk = 4096
    for start in range(0, count, chunk):
        part = slice(start, start + chunk)
        source = all_renders[labels[part], faces[part]][:, None]  # (n, 1, CANVAS, CANVAS)
        grid = F.affine_grid(matrices[part], list(source.shape), align_corners=False)
        warped = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        thicker = F.max_pool2d(warped, 3, stride=1, padding=1)
        thinner = -F.max_pool2d(-warped, 3, stride=1, padding=1)
        # Erosion can wipe out a hairline face's strokes entirely: keep those images as they are.
        ink_kept = thinner.sum(dim=(1, 2, 3)) / warped.sum(dim=(1, 2, 3)).clamp_min(1e-6)
        thinner = torch.where(ink_kept[:, None, None, None] > MIN_INK_KEPT_BY_EROSION, thinner, warped)
        draw = stroke_draw[part][:, None, None, None]
        stroked = torch.where(draw < half, thicker, torch.where(draw < 2 * half, thinner, warped))
        small = _reduce(stroked[:, 0], image_size) + noise[part]
        images[part] = (small.clamp(0, 1) * 255).round().to(torch.uint8)

    return {
        "images": images.numpy(),
        "labels": labels.numpy().astype(np.int64),
        "faces": faces.numpy().astype(np.int64),
        "codepoints": np.array([c.codepoint for c in classes], dtype=np.int64),
    }


MIN_IMAGE_SIZE = 8
MAX_IMAGE_SIZE = CANVAS  # rendered at 64 px: larger images would only be upscaled
MIN_IMAGES_PER_CLASS = 2  # a P×K batch needs at least 2 images of a class (a positive pair)


def check_glyph_settings(image_size: int, images_per_class: int) -> None:
    """Refuse sizes no dataset can have, with a message that says what would work."""
    if not isinstance(image_size, int) or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise UsageError(
            f"image_size must be a whole number of pixels from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} (glyphs are "
            f"rendered at {CANVAS} px), got {image_size!r}; the default is 32"
        )
    if not isinstance(images_per_class, int) or images_per_class < MIN_IMAGES_PER_CLASS:
        raise UsageError(
            f"images_per_class must be at least {MIN_IMAGES_PER_CLASS} (metric learning needs pairs of a class), "
            f"got {images_per_class!r}; the default is 48"
        )


@lru_cache(maxsize=1)
def generator_fingerprint() -> str:
    """A hash of this module's source: the code that generates the dataset names its cache, so an
    edited generator never serves an old cache."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


def cache_path(root: str | os.PathLike, seed: int, image_size: int, images_per_class: int) -> Path:
    name = f"glyphs-{generator_fingerprint()}-seed{seed}-{image_size}px-{images_per_class}per-class.npz"
    return Path(root) / "glyphs" / name


def load_glyphs(
    root: str | os.PathLike = "data", seed: int = 0, image_size: int = 32, images_per_class: int = 48
) -> dict[str, np.ndarray]:
    """The generated arrays from the cache ``root/glyphs/*.npz``, first generated (deterministically for a
    seed, a few seconds on 2 cores) and cached atomically if needed."""
    check_glyph_settings(image_size, images_per_class)
    path = cache_path(root, seed, image_size, images_per_class)
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in ("images", "labels", "faces", "codepoints")}
            if arrays["images"].shape[1:] == (image_size, image_size):
                return arrays
            warnings.warn(f"glyph cache {path} has the wrong image size; regenerating it", stacklevel=2)
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
            warnings.warn(f"glyph cache {path} is unreadable ({error}); regenerating it", stacklevel=2)
    arrays = generate_glyphs(seed, image_size, images_per_class)
    write_atomically(path, lambda file: np.savez(file, **arrays))
    return arrays


class GlyphDataset(torch.utils.data.Dataset):
    """Rendered characters, one class per character (see the module docstring).

    Args:
        split: ``"train"``, ``"val"`` (held-out classes carved from the training half, for model
            selection) or ``"test"`` (the other half of the classes, never seen in training).
        root: folder for the cache (``root/glyphs/*.npz``).
        seed: decides the class split and every augmentation.
        transform: optional callable applied to each ``(1, H, W)`` float image (also by :meth:`batch`).
        val_fraction: share of the training half's classes held out as the validation split.

    ``ds[i]`` is ``(image (1, H, W) float32 in [0, 1], label int)``; ``ds.labels`` is (len,) int64,
    contiguous in ``0 .. ds.num_classes - 1``; ``ds.characters[label]`` is the class's character.
    """

    def __init__(self, split: str = "train", root: str | os.PathLike = "data", seed: int = 0, image_size: int = 32,
                 images_per_class: int = 48, transform=None, val_fraction: float = 0.2) -> None:
        if split not in SPLITS:
            raise UsageError(f"split must be one of {SPLITS}, got {split!r}")
        arrays = load_glyphs(root, seed, image_size, images_per_class)
        class_split = split_classes(len(arrays["codepoints"]), seed, val_fraction)
        chosen_classes = np.flatnonzero(class_split == SPLITS.index(split))
        keep = np.isin(arrays["labels"], chosen_classes)
        relabel = np.full(len(arrays["codepoints"]), -1, dtype=np.int64)
        relabel[chosen_classes] = np.arange(len(chosen_classes))
        self.split = split
        self.seed = seed
        self.transform = transform
        self.images = torch.from_numpy(arrays["images"][keep])  # (N, H, W) uint8
        self.labels = torch.from_numpy(relabel[arrays["labels"][keep]])
        self.codepoints = arrays["codepoints"][chosen_classes]
        self.characters = [chr(c) for c in self.codepoints]
        self.num_classes = len(chosen_classes)

    in_memory = True  # all images are one tensor: ``batch`` indexes many at once

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].float().div_(255.0)[None]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(B, 1, H, W)`` and labels ``(B,)`` for many indices at once (the fast path of
        training and evaluation); the transform, if any, is applied to each image as ``ds[i]`` does."""
        indices = torch.as_tensor(indices)
        images = self.images[indices].float().div_(255.0)[:, None]
        if self.transform is not None:
            images = torch.stack([self.transform(image) for image in images])
        return images, self.labels[indices]

    def __repr__(self) -> str:
        return (
            f"GlyphDataset(split={self.split!r}, classes={self.num_classes}, images={len(self)}, "
            f"size={tuple(self.images.shape[1:])}, seed={self.seed})"
        )
