"""Image transforms of the published recipe (the official release, dvl-tum/intra_batch), for the four benchmarks:
an RGB ``PIL.Image`` -> a normalised ``(3, image_size, image_size) float32`` tensor.

The release crops 227 px (testing: the centre of the shorter side resized to 256 px), rather than 224, as
earlier metric-learning code did; ResNet-50's global pooling makes it indifferent to the exact input size.

Test files import the module, not ``test_transform`` itself, or pytest collects the function as a test.
"""

from __future__ import annotations

from torchvision import transforms

from mpn_tutorial.errors import UsageError

# ImageNet statistics: the backbone was pretrained on images normalised with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(image_size: int = 227) -> transforms.Compose:
    """Augmentation for training: PIL RGB image -> ``(3, image_size, image_size) float32``.

    RandomResizedCrop (default scale 0.08-1 and aspect 3/4-4/3) + horizontal flip + ImageNet
    normalisation + RandomErasing (p = 0.5). Erasing comes last because it works on tensors; the
    erased rectangle is filled with 0, which after normalisation is the ImageNet mean colour.
    """
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            transforms.RandomErasing(p=0.5),
        ]
    )


RESIZE_PER_CROP = 256 / 227


def test_transform(image_size: int = 227, resize: int | None = None) -> transforms.Compose:
    """Deterministic transform for evaluation: PIL RGB image -> ``(3, image_size, image_size) float32``.

    Resize the shorter side to ``resize`` (aspect ratio kept), take the central ``image_size`` square,
    normalise with the ImageNet statistics. ``resize`` defaults to ``image_size`` × 256/227, so every
    crop size sees the release's field of view (72 px for 64): a small crop shows the whole object.
    """
    resize = round(image_size * RESIZE_PER_CROP) if resize is None else resize
    if resize < image_size:
        raise UsageError(f"resize={resize} is smaller than the crop image_size={image_size}")
    return transforms.Compose(
        [
            transforms.Resize(resize),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
