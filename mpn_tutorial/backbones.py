"""Backbones: images (B, C, H, W) -> features (B, feature_dim), with global max pooling as published:
:class:`GlyphEncoder` (the CPU default) and :class:`ResNetBackbone` (the published recipe uses an
ImageNet-pretrained ResNet-50); :func:`fold_batchnorm` makes the inference copy evaluation runs.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch import nn

from mpn_tutorial.errors import MissingFileError, UsageError, WeightsUnavailableError


class GlyphEncoder(nn.Module):
    """A small CNN for 32×32 one-channel glyphs, the CPU default: (B, in_channels, H, W) -> (B, channels[-1]).
    One block per entry of ``channels`` (conv 3×3, BatchNorm, ReLU; 2×2 max-pool between blocks), then
    global max pooling as the paper's ResNet; channels-last memory layout (faster convolutions on CPU)."""

    def __init__(self, in_channels: int = 1, channels: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for index, width in enumerate(channels):
            if index > 0:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.Conv2d(previous, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
            previous = width
        self.features = nn.Sequential(*layers).to(memory_format=torch.channels_last)
        self.feature_dim = previous

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.features(images.contiguous(memory_format=torch.channels_last))
        return torch.amax(features, dim=(2, 3))  # global max pooling


IMAGENET_WEIGHT_FILES = {"resnet18": "resnet18-f37072fd.pth", "resnet50": "resnet50-0676ba61.pth"}


class ResNetBackbone(nn.Module):
    """torchvision ResNet-18/50 without its classifier, with global **max** pooling (as published).

    ``pretrained=True`` loads ImageNet weights from ``weights_path``, else from torch's hub cache,
    downloading them when the network allows. ``checkpointing=True`` recomputes each residual stage in
    the backward pass (activation checkpointing) to fit larger batches in GPU memory."""

    def __init__(self, name: str = "resnet50", pretrained: bool = True, weights_path: str | os.PathLike | None = None,
                 checkpointing: bool = False) -> None:
        super().__init__()
        import torchvision

        if name not in IMAGENET_WEIGHT_FILES:
            raise UsageError(f"backbone must be one of {sorted(IMAGENET_WEIGHT_FILES)}, got {name!r}")
        network = getattr(torchvision.models, name)(weights=None)
        if pretrained:
            network.load_state_dict(load_imagenet_weights(name, weights_path))
        self.stem = nn.Sequential(network.conv1, network.bn1, network.relu, network.maxpool)
        self.stages = nn.ModuleList([network.layer1, network.layer2, network.layer3, network.layer4])
        self.feature_dim = network.fc.in_features
        self.checkpointing = checkpointing

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)
        for stage in self.stages:
            if self.checkpointing and self.training and x.requires_grad:
                x = torch.utils.checkpoint.checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
        return torch.amax(x, dim=(2, 3))


def load_imagenet_weights(name: str, weights_path: str | os.PathLike | None = None) -> dict:
    """ImageNet weights for a torchvision ResNet, loaded with ``weights_only=True``."""
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise MissingFileError(f"ImageNet weights file {path} does not exist; pass the path of a downloaded "
                                   f"{IMAGENET_WEIGHT_FILES.get(name, 'weights')} file, or build the model with "
                                   "pretrained=False")
        return torch.load(path, map_location="cpu", weights_only=True)
    import torchvision

    weights = {"resnet18": torchvision.models.ResNet18_Weights, "resnet50": torchvision.models.ResNet50_Weights}
    try:
        return weights[name].IMAGENET1K_V1.get_state_dict(progress=False, weights_only=True)
    except Exception as error:  # URLError, OSError, ...: offline or blocked
        cache = Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_WEIGHT_FILES[name]
        raise WeightsUnavailableError(
            f"downloading the ImageNet weights for {name} failed ({error.__class__.__name__}: {error}). Run the "
            f"command again once the network is back; or, on a machine with internet access, download "
            f"{weights[name].IMAGENET1K_V1.url} and copy it to {cache} (or pass weights_path=...), or build the "
            "model with pretrained=False."
        ) from error


def _fold_pair(convolution: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """One convolution computing ``norm(convolution(x))`` with the norm's running statistics:
    W' = W * gamma / sigma and b' = (b - mu) * gamma / sigma + beta, where sigma = sqrt(var + eps)."""
    scale = norm.weight.detach() * torch.rsqrt(norm.running_var + norm.eps)  # gamma / sigma, (C_out,)
    bias = convolution.bias.detach() if convolution.bias is not None else torch.zeros_like(norm.running_mean)
    folded = copy.deepcopy(convolution).requires_grad_(False)
    folded.weight.copy_(convolution.weight.detach() * scale.reshape(-1, 1, 1, 1))
    folded.bias = nn.Parameter((bias - norm.running_mean) * scale + norm.bias.detach(), requires_grad=False)
    return folded


def _is_foldable(convolution: nn.Module, norm: nn.Module) -> bool:
    return (isinstance(convolution, nn.Conv2d) and type(norm) is nn.BatchNorm2d and norm.track_running_stats
            and norm.running_mean is not None and norm.affine and convolution.out_channels == norm.num_features)


@torch.no_grad()
def fold_batchnorm(backbone: nn.Module) -> nn.Module:
    """An inference copy of ``backbone`` in which each BatchNorm2d that follows a Conv2d is folded into it: in eval
    mode the norm is an affine map per channel, so ``conv`` then ``norm`` is one convolution (:func:`_fold_pair`),
    the same function up to float rounding (about 1e-6 relative) without the norm's pass over the activations.
    Folded: consecutive (Conv2d, BatchNorm2d) in an ``nn.Sequential`` and torchvision's ``convN`` / ``bnN``
    attribute pairs. The copy is in eval mode, needs no gradients and shares no tensor with ``backbone``:
    (B, C, H, W) -> (B, feature_dim), as the original.
    """
    folded = copy.deepcopy(backbone).eval().requires_grad_(False)
    for module in list(folded.modules()):
        names = list(module._modules)
        if isinstance(module, nn.Sequential):
            pairs = list(zip(names, names[1:]))
        else:
            pairs = [(name, f"bn{name[4:]}") for name in names if name.startswith("conv") and name[4:].isdigit()]
        for convolution_name, norm_name in pairs:
            convolution, norm = module._modules[convolution_name], module._modules.get(norm_name)
            if _is_foldable(convolution, norm):
                module._modules[convolution_name] = _fold_pair(convolution, norm)
                module._modules[norm_name] = nn.Identity()
    return folded
