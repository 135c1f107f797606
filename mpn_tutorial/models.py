"""Backbones, the message-passing network over the mini-batch, and the full model.

The method (Seidenschwarz, Elezi, Leal-Taixé, ICML 2021): a batch of N images gives N embeddings.
Treat them as the nodes of a fully connected graph (with self-loops) and let every node attend to
every other node with multi-head dot-product attention, a transformer block over the *batch*:

    q_i = W_q x_i,  k_j = W_k x_j,  v_j = W_v x_j                    (per head h, d = dim / heads)
    s_ij = q_i · k_j / sqrt(d)                                          (attention score)
    a_ij = exp(s_ij) / sum_j' exp(s_ij')                                (softmax over the whole batch)
    m_i  = W_o concat_h( sum_j a_ij v_j )                               (message received by i)
    x_i <- LayerNorm(x_i + Dropout(m_i))
    x_i <- LayerNorm(x_i + Dropout(W_2 Dropout(ReLU(W_1 x_i))))         (feed-forward network)

A classifier on the refined embeddings gives the MPN logits; a cross-entropy on them trains the
backbone through the attention. At test time only the backbone embedding is used.

Published softmax detail: the official code normalises with an implicit extra logit of zero,
``a_ij = exp(s_ij) / (1 + sum_j' exp(s_ij'))``, so each row sums to slightly less than one (a node
may "attend to nothing"). ``zero_logit=True`` reproduces it; the default is the standard softmax.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------------
# Backbones: images (B, C, H, W) -> features (B, feature_dim)
# ---------------------------------------------------------------------------------------------


class GlyphEncoder(nn.Module):
    """A small CNN for 32×32 one-channel glyphs, the CPU default.

    One block per entry of ``channels`` (conv 3×3, BatchNorm, ReLU; 2×2 max-pool between blocks),
    then global max pooling, like the ResNet head of the paper. (B, in_channels, H, W) ->
    (B, channels[-1]). Runs in channels-last memory layout, which is faster for convolutions on CPU.
    """

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


IMAGENET_WEIGHT_FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet50": "resnet50-0676ba61.pth",
}


class ResNetBackbone(nn.Module):
    """torchvision ResNet-18/50 without its classifier, with global **max** pooling (as published).

    ``pretrained=True`` loads ImageNet weights from ``weights_path`` when given, else from torch's
    hub cache (``$TORCH_HOME/hub/checkpoints``), downloading them when the network allows. Offline
    and without the file, a clear error says how to get them; ``pretrained=False`` always works.
    ``checkpointing=True`` recomputes each residual stage in the backward pass (activation
    checkpointing) to fit larger batches in GPU memory.
    """

    def __init__(
        self,
        name: str = "resnet50",
        pretrained: bool = True,
        weights_path: str | os.PathLike | None = None,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        import torchvision

        if name not in IMAGENET_WEIGHT_FILES:
            raise ValueError(f"backbone must be one of {sorted(IMAGENET_WEIGHT_FILES)}, got {name!r}")
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
            raise FileNotFoundError(f"ImageNet weights file {path} does not exist")
        return torch.load(path, map_location="cpu", weights_only=True)
    import torchvision

    weights = {"resnet18": torchvision.models.ResNet18_Weights, "resnet50": torchvision.models.ResNet50_Weights}
    try:
        return weights[name].IMAGENET1K_V1.get_state_dict(progress=False, weights_only=True)
    except Exception as error:  # URLError, OSError, ...: offline or blocked
        cache = Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_WEIGHT_FILES[name]
        raise RuntimeError(
            f"could not load ImageNet weights for {name} ({error.__class__.__name__}: {error}). "
            f"On a machine with internet access, download {weights[name].IMAGENET1K_V1.url} and copy it to "
            f"{cache} (or pass weights_path=...), or build the model with pretrained=False."
        ) from error


# ---------------------------------------------------------------------------------------------
# Message passing over the batch
# ---------------------------------------------------------------------------------------------


def _check_batch(x: torch.Tensor, dim: int, what: str) -> None:
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"{what} expects embeddings of shape (N, {dim}), got {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(
            f"{what} needs a batch of at least 2 samples to pass messages between, got {x.shape[0]}; "
            "use a P×K batch (PKSampler) or drop_last=True"
        )


class MessagePassingLayer(nn.Module):
    """One round of message passing over the batch: a post-norm transformer block (module docstring).

    Args:
        dim: embedding dimension; must be divisible by ``num_heads``.
        num_heads: attention heads; each works in ``dim // num_heads`` dimensions.
        ff_dim: hidden width of the feed-forward network.
        dropout: on the attention weights, the messages and the feed-forward network.
        zero_logit: use the published softmax with an extra zero logit (rows sum to < 1).
        pass_messages: False turns message passing off (an ablation control): the block keeps its
            LayerNorms and feed-forward network, but no sample receives anything from the others.

    ``forward(x)``: (N, dim) -> (N, dim), through fused attention
    (``scaled_dot_product_attention``). ``forward(x, return_attention=True)`` computes the same
    thing step by step and also returns the weights (num_heads, N, N), where ``attn[h, i, j]`` is
    the weight sample i gives to sample j's message in head h (before dropout).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ff_dim: int = 2048,
        dropout: float = 0.1,
        zero_logit: bool = False,
        pass_messages: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.zero_logit = zero_logit
        self.pass_messages = pass_messages
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.linear1 = nn.Linear(dim, ff_dim)
        self.linear2 = nn.Linear(ff_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attention_dropout = nn.Dropout(dropout)
        self.message_dropout = nn.Dropout(dropout)
        self.ff_dropout = nn.Dropout(dropout)
        self.output_dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Xavier-uniform weights and zero biases for the attention maps, as the official code does.
        for projection in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(projection.weight)
            nn.init.zeros_(projection.bias)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(N, dim) -> (num_heads, N, head_dim)."""
        return x.view(x.shape[0], self.num_heads, self.head_dim).transpose(0, 1)

    def attention_weights(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Softmax of the scaled scores: q, k (num_heads, N, head_dim) -> (num_heads, N, N)."""
        scores = q @ k.transpose(1, 2) / math.sqrt(self.head_dim)
        if self.zero_logit:
            # exp(s_ij) / (1 + sum_j exp(s_ij)): a softmax over the scores plus one logit of 0
            zeros = scores.new_zeros(scores.shape[:-1] + (1,))
            return torch.softmax(torch.cat([scores, zeros], dim=-1), dim=-1)[..., :-1]
        return torch.softmax(scores, dim=-1)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        _check_batch(x, self.dim, "MessagePassingLayer")
        q, k, v = (self._split_heads(p(x)) for p in (self.q_proj, self.k_proj, self.v_proj))
        if return_attention:
            weights = self.attention_weights(q, k)  # (H, N, N)
            heads = self.attention_dropout(weights) @ v  # (H, N, head_dim)
        else:
            weights = None
            if self.zero_logit:
                # A key of zeros scores exactly 0 and its value of zeros adds nothing: the fused
                # kernel then computes the zero-logit softmax.
                k = torch.cat([k, k.new_zeros(self.num_heads, 1, self.head_dim)], dim=1)
                v = torch.cat([v, v.new_zeros(self.num_heads, 1, self.head_dim)], dim=1)
            drop = self.dropout if self.training else 0.0
            heads = F.scaled_dot_product_attention(q[None], k[None], v[None], dropout_p=drop)[0]
        messages = self.out_proj(heads.transpose(0, 1).reshape(x.shape[0], self.dim))
        if not self.pass_messages:
            messages = torch.zeros_like(messages)  # ablation: nothing flows between samples
        x = self.norm1(x + self.message_dropout(messages))
        feed_forward = self.linear2(self.ff_dropout(F.relu(self.linear1(x))))
        x = self.norm2(x + self.output_dropout(feed_forward))
        return (x, weights) if return_attention else x


class BNNeckClassifier(nn.Module):
    """BatchNorm1d with a frozen (zero) bias, then a bias-free linear layer: (N, dim) -> (N, C)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim)
        self.norm.bias.requires_grad_(False)
        self.linear = nn.Linear(dim, num_classes, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(features))


class MessagePassingNetwork(nn.Module):
    """Input projection, ``num_layers`` message-passing layers, and (optionally) a BNNeck classifier.

    ``forward(x)``: embeddings (N, dim) -> refined features (N, out_dim), where ``out_dim`` is
    ``dim``, or ``dim * num_layers`` with ``concat_layers=True`` (the Cars196 preset: the classifier
    sees every layer's output). ``forward(x, return_attention=True)`` -> (features, list with one
    (num_heads, N, N) tensor per layer). ``classifier`` (present when ``num_classes`` is given)
    maps features to the MPN logits (N, num_classes).
    """

    def __init__(
        self,
        dim: int,
        num_layers: int,
        num_heads: int,
        num_classes: int | None = None,
        ff_dim: int = 2048,
        dropout: float = 0.1,
        zero_logit: bool = False,
        concat_layers: bool = False,
        pass_messages: bool = True,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        self.dim = dim
        self.concat_layers = concat_layers
        self.out_dim = dim * num_layers if concat_layers else dim
        self.input_proj = nn.Linear(dim, dim)
        self.layers = nn.ModuleList(
            MessagePassingLayer(dim, num_heads, ff_dim, dropout, zero_logit, pass_messages) for _ in range(num_layers)
        )
        self.classifier = BNNeckClassifier(self.out_dim, num_classes) if num_classes is not None else None

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        _check_batch(x, self.dim, "MessagePassingNetwork")
        x = self.input_proj(x)
        outputs, attention = [], []
        for layer in self.layers:
            if return_attention:
                x, weights = layer(x, return_attention=True)
                attention.append(weights)
            else:
                x = layer(x)
            outputs.append(x)
        features = torch.cat(outputs, dim=1) if self.concat_layers else x
        return (features, attention) if return_attention else features


# ---------------------------------------------------------------------------------------------
# The full model
# ---------------------------------------------------------------------------------------------


@dataclass
class ModelOutput:
    """What the model returns in training mode (all tensors have N rows, the batch size)."""

    embeddings: torch.Tensor  # (N, D) backbone embedding, not normalised
    backbone_logits: torch.Tensor | None = None  # (N, C) or None without a classifier
    mpn_logits: torch.Tensor | None = None  # (N, C) or None without an MPN
    attention: list[torch.Tensor] = field(default_factory=list)  # per layer (num_heads, N, N)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a :class:`MetricLearningModel` (stored in checkpoints)."""

    backbone: str = "glyph_cnn"  # "glyph_cnn" | "resnet18" | "resnet50"
    embedding_dim: int = 64
    num_classes: int = 0  # training classes; 0 = no classifier (pair / triplet losses)
    in_channels: int = 1
    glyph_channels: tuple[int, ...] = (32, 64, 128, 256)
    pretrained: bool = False
    weights_path: str | None = None
    checkpointing: bool = False
    mpn_layers: int = 0  # 0 = no message passing
    mpn_heads: int = 2
    mpn_ff_dim: int = 2048
    mpn_dropout: float = 0.1
    zero_logit: bool = False
    concat_layers: bool = False
    mpn_pass_messages: bool = True  # False: ablation control without message passing
    temperature: float = 1.0  # logits are divided by it


class MetricLearningModel(nn.Module):
    """Backbone -> embedding -> (backbone classifier, message passing network -> MPN classifier).

    In training mode ``model(images)`` returns a :class:`ModelOutput` (logits already divided by the
    temperature; attention only with ``return_attention=True``). In eval mode it returns the
    L2-normalised backbone embedding (N, D), what retrieval uses; the MPN is not run.

    Optional test-time refinement (``refine_embeddings``): the "pseudo-test" variant of the paper,
    which runs the trained MPN over each query's k-reciprocal neighbourhood. Off by default.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        if config.backbone == "glyph_cnn":
            self.backbone = GlyphEncoder(config.in_channels, tuple(config.glyph_channels))
        else:
            self.backbone = ResNetBackbone(
                config.backbone, config.pretrained, config.weights_path, config.checkpointing
            )
        self.embedding = nn.Linear(self.backbone.feature_dim, config.embedding_dim)
        self.classifier = (
            nn.Linear(config.embedding_dim, config.num_classes) if config.num_classes > 0 else None
        )
        self.mpn = None
        if config.mpn_layers > 0:
            if config.num_classes <= 0:
                raise ValueError("message passing is trained through its classifier: set num_classes > 0")
            self.mpn = MessagePassingNetwork(
                config.embedding_dim,
                config.mpn_layers,
                config.mpn_heads,
                num_classes=config.num_classes,
                ff_dim=config.mpn_ff_dim,
                dropout=config.mpn_dropout,
                zero_logit=config.zero_logit,
                concat_layers=config.concat_layers,
                pass_messages=config.mpn_pass_messages,
            )

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone embedding, not normalised: (N, C, H, W) -> (N, D)."""
        return self.embedding(self.backbone(images))

    def forward(self, images: torch.Tensor, return_attention: bool = False, gather=None):
        """Training: :class:`ModelOutput`; eval: normalised embeddings (N, D).

        ``gather`` (multi-GPU training only): a function that turns this process's embeddings
        into the global batch's, so the classifier and the MPN see every sample.
        """
        embeddings = self.embed(images)
        if not self.training:
            return F.normalize(embeddings, dim=1)
        if gather is not None:
            embeddings = gather(embeddings)
        return self.heads(embeddings, return_attention)

    def heads(self, embeddings: torch.Tensor, return_attention: bool = False) -> ModelOutput:
        """Backbone classifier and MPN on backbone embeddings (N, D) -> :class:`ModelOutput`."""
        temperature = self.config.temperature
        output = ModelOutput(embeddings=embeddings)
        if self.classifier is not None:
            output.backbone_logits = self.classifier(embeddings) / temperature
        if self.mpn is not None:
            refined = self.mpn(F.normalize(embeddings, dim=1), return_attention=return_attention)
            if return_attention:
                refined, output.attention = refined
            output.mpn_logits = self.mpn.classifier(refined) / temperature
        return output

    @torch.no_grad()
    def refine_embeddings(
        self, embeddings: torch.Tensor, k: int = 10, chunk_size: int = 1024
    ) -> torch.Tensor:
        """Test-time refinement ("pseudo-test" variant): (N, D) normalised -> (N, out_dim) normalised.

        For each sample, its k-reciprocal neighbourhood (the samples among its k nearest neighbours
        that also have it among theirs) plus the sample itself forms a small graph; the trained MPN
        (in eval mode, no dropout) refines the sample's embedding by message passing over it. The
        result replaces the backbone embedding for retrieval. Needs an MPN; costs N small MPN passes.
        """
        if self.mpn is None:
            raise ValueError("refine_embeddings needs a model trained with message passing (mpn_layers > 0)")
        embeddings = F.normalize(embeddings, dim=1)
        n = embeddings.shape[0]
        k = min(k, n - 1)
        if k < 1:
            raise ValueError("refine_embeddings needs at least 2 embeddings")
        neighbours = torch.empty(n, k, dtype=torch.long)
        for start in range(0, n, chunk_size):
            similarity = embeddings[start : start + chunk_size] @ embeddings.T
            rows = torch.arange(similarity.shape[0])
            similarity[rows, rows + start] = -math.inf  # not its own neighbour
            neighbours[start : start + chunk_size] = similarity.topk(k, dim=1).indices
        was_training = self.mpn.training
        self.mpn.eval()
        refined = []
        for i in range(n):
            candidates = neighbours[i]
            reciprocal = candidates[(neighbours[candidates] == i).any(dim=1)]
            group = torch.cat([torch.tensor([i]), reciprocal])
            if len(group) < 2:  # no reciprocal neighbour: use the nearest one
                group = torch.cat([torch.tensor([i]), candidates[:1]])
            refined.append(self.mpn(embeddings[group])[0])
        self.mpn.train(was_training)
        return F.normalize(torch.stack(refined), dim=1)

