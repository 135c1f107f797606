"""The message-passing network over the mini-batch, and the full model: the published computation only.

The method (Seidenschwarz, Elezi, Leal-Taixé, ICML 2021): a batch of N images gives N embeddings.
Treat them as the nodes of a fully connected graph (with self-loops) and let every node attend to
every other node with multi-head dot-product attention, a transformer block over the *batch*:

    q_i = W_q x_i + b_q,  k_j = W_k x_j + b_k,  v_j = W_v x_j + b_v    (per head h, d = dim / heads)
    s_ij = q_i · k_j / sqrt(d)                                          (attention score)
    a_ij = exp(s_ij) / sum_j' exp(s_ij')                                (softmax over the whole batch)
    m_i  = W_o concat_h( sum_j a_ij v_j ) + b_o                         (message received by i)
    x_i <- LayerNorm(x_i + Dropout(m_i))                                (residual 1: the messages)
    x_i <- LayerNorm(x_i + Dropout(W_2 Dropout(ReLU(W_1 x_i))))         (residual 2: feed-forward)

:meth:`BatchAttention.forward` is the first four lines, :class:`FeedForward` the last one, and
:meth:`MessagePassingLayer.forward` the two residual lines. In the full model
(:class:`MetricLearningModel`) a cross-entropy on the backbone's logits and one on the MPN's train
the backbone; at test time only the backbone embedding is used.

Softmax detail: the authors' release (and the benchmark presets) set ``zero_logit=True``, an
implicit extra logit of zero, ``a_ij = exp(s_ij) / (1 + sum_j' exp(s_ij'))``: rows sum to slightly
less than one (a node may "attend to nothing"). The default is the paper's standard softmax.

The studies' controls live in ``controls.py``: they replace parts below when a model is built (the
``make_`` methods of :class:`MetricLearningModel`), never while it runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mpn_tutorial.backbones import GlyphEncoder, ResNetBackbone
from mpn_tutorial.errors import UsageError
from mpn_tutorial.tools.settings import setting

# The published layer's sizes: MessagePassingLayer's defaults and ModelConfig's (one declaration).
FF_DIM, DROPOUT = 2048, 0.1


def check_heads(dim: int, num_heads: int) -> None:
    """The one rule for the heads: each of them works in dim / num_heads dimensions."""
    if dim < 1 or num_heads < 1:
        raise UsageError(f"the embedding dimension and the number of heads must be at least 1, got {dim} and "
                         f"{num_heads}")
    if dim % num_heads:
        fitting = [h for h in range(1, min(dim, 16) + 1) if dim % h == 0]
        raise UsageError(f"the embedding dimension {dim} must be divisible by the number of heads {num_heads} (each "
                         f"head works in dim / heads dimensions); heads that fit: {fitting}")


def check_layers(num_layers: int, concat_layers: bool) -> None:
    """The one rule for the layers: any number from 0, and at least one whose output to concatenate."""
    if num_layers < 0 or (concat_layers and num_layers < 1):
        raise UsageError(f"the number of message-passing layers must be at least 0 (1 with concat_layers), got "
                         f"{num_layers}")


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(..., N, dim) -> (..., num_heads, N, dim // num_heads): head h takes the h-th slice of each row."""
    return x.unflatten(-1, (num_heads, -1)).transpose(-3, -2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(..., num_heads, N, head_dim) -> (..., N, num_heads * head_dim): the heads concatenated per row."""
    return x.transpose(-3, -2).flatten(-2)


def attention_weights(q: torch.Tensor, k: torch.Tensor, zero_logit: bool = False) -> torch.Tensor:
    """a = softmax_j(q_i · k_j / sqrt(d)): q, k (..., H, N, d) -> (..., H, N, N), rows summing to 1
    (to slightly less with ``zero_logit``: a softmax over the scores and one extra logit of 0)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # s_ij = q_i · k_j / sqrt(d)
    if zero_logit:
        scores = torch.cat([scores, scores.new_zeros(scores.shape[:-1] + (1,))], dim=-1)
        return torch.softmax(scores, dim=-1)[..., :-1]
    return torch.softmax(scores, dim=-1)


class BatchAttention(nn.Module):
    """Multi-head dot-product attention over the batch: x (N, dim) -> messages m (N, dim) (or B
    independent batches, (B, N, dim)). ``forward(x, return_attention=True)`` computes the weights
    explicitly and also returns them, a (num_heads, N, N), where ``a[h, i, j]`` is the weight sample i
    gives to sample j's value in head h; without it the same computation runs in one fused kernel and
    the weights are None."""

    def __init__(self, dim: int, num_heads: int, dropout: float = DROPOUT, zero_logit: bool = False) -> None:
        super().__init__()
        check_heads(dim, num_heads)
        self.num_heads, self.dropout, self.zero_logit = num_heads, dropout, zero_logit
        self.q_proj = nn.Linear(dim, dim)  # W_q
        self.k_proj = nn.Linear(dim, dim)  # W_k
        self.v_proj = nn.Linear(dim, dim)  # W_v
        self.out_proj = nn.Linear(dim, dim)  # W_o
        self.attention_dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As the release: Xavier-uniform weights and zero biases."""
        for projection in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(projection.weight)
            nn.init.zeros_(projection.bias)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        q, k, v = (split_heads(projection(x), self.num_heads) for projection in (self.q_proj, self.k_proj, self.v_proj))
        if return_attention:
            weights = attention_weights(q, k, self.zero_logit)  # a_ij = softmax_j(q_i · k_j / sqrt(d)), (H, N, N)
            heads = self.attention_dropout(weights) @ v  # sum_j a_ij v_j, (H, N, head_dim)
        else:  # the same computation in one fused kernel
            weights = None
            if self.zero_logit:  # a key of zeros scores exactly 0, and its value of zeros adds nothing
                k, v = (torch.cat([t, t.new_zeros(t.shape[:-2] + (1, t.shape[-1]))], dim=-2) for t in (k, v))
            heads = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(merge_heads(heads)), weights  # m_i = W_o concat_h(...)


class FeedForward(nn.Module):
    """The position-wise feed-forward network: (N, dim) -> (N, dim), ``Dropout(W_2 Dropout(ReLU(W_1 x)))``."""

    def __init__(self, dim: int, ff_dim: int = FF_DIM, dropout: float = DROPOUT) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, ff_dim)  # W_1
        self.linear2 = nn.Linear(ff_dim, dim)  # W_2
        self.hidden_dropout = nn.Dropout(dropout)
        self.output_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dropout(self.linear2(self.hidden_dropout(F.relu(self.linear1(x)))))


class MessagePassingLayer(nn.Module):
    """One round of message passing over the batch: a post-norm transformer block whose "sequence" is
    the batch (module docstring). x (N, dim) -> (N, dim); ``layer(x, return_attention=True)`` ->
    (x, weights (num_heads, N, N)). ``attention``: the class that computes the messages, built with
    ``(dim, num_heads, dropout, zero_logit)`` (the published :class:`BatchAttention`, or a control of
    ``controls.py``)."""

    def __init__(self, dim: int, num_heads: int, ff_dim: int = FF_DIM, dropout: float = DROPOUT,
                 zero_logit: bool = False, *, attention: type[nn.Module] = BatchAttention) -> None:
        super().__init__()
        if ff_dim < 1 or not 0 <= dropout < 1:
            raise UsageError(f"ff_dim must be at least 1 and dropout in [0, 1), got {ff_dim} and {dropout}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // max(num_heads, 1)
        self.attention = attention(dim, num_heads, dropout, zero_logit)
        self.feed_forward = FeedForward(dim, ff_dim, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.message_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        _check_batch(x, self.dim, "MessagePassingLayer")
        messages, weights = self.attention(x, return_attention)  # m_i, and a (H, N, N) when asked
        x = self.norm1(x + self.message_dropout(messages))  # residual 1: the messages
        x = self.norm2(x + self.feed_forward(x))  # residual 2: feed-forward
        return (x, weights) if return_attention else x

    # W_q, W_k, W_v, W_o of the paper, on the layer itself (the names other code relies on)
    q_proj = property(lambda self: self.attention.q_proj, doc="W_q: nn.Linear(dim, dim)")
    k_proj = property(lambda self: self.attention.k_proj, doc="W_k: nn.Linear(dim, dim)")
    v_proj = property(lambda self: self.attention.v_proj, doc="W_v: nn.Linear(dim, dim)")
    out_proj = property(lambda self: self.attention.out_proj, doc="W_o: nn.Linear(dim, dim)")


class MessagePassingNetwork(nn.Module):
    """The input map, then ``num_layers`` message-passing layers: embeddings (N, dim) -> refined
    embeddings (N, out_dim), where ``out_dim`` is ``dim``, or ``dim * num_layers`` with
    ``concat_layers=True`` (the Cars196 preset: the classifier sees every layer's output).
    ``forward(x, return_attention=True)`` -> (embeddings, list with one (num_heads, N, N) tensor per
    layer, None for a layer that computes no weights). ``attention``: as :class:`MessagePassingLayer`'s;
    ``input_map=False`` leaves the input map out (a study's option)."""

    def __init__(self, dim: int, num_layers: int, num_heads: int, ff_dim: int = FF_DIM, dropout: float = DROPOUT,
                 zero_logit: bool = False, concat_layers: bool = False, *,
                 attention: type[nn.Module] = BatchAttention, input_map: bool = True) -> None:
        super().__init__()
        check_layers(num_layers, concat_layers)
        self.dim, self.concat_layers = dim, concat_layers
        self.out_dim = dim * num_layers if concat_layers else dim
        self.input_proj = nn.Linear(dim, dim) if input_map else nn.Identity()
        self.layers = nn.ModuleList(
            MessagePassingLayer(dim, num_heads, ff_dim, dropout, zero_logit, attention=attention)
            for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        _check_batch(x, self.dim, "MessagePassingNetwork")
        x = self.input_proj(x)
        outputs, attention = [], []
        for layer in self.layers:
            x, weights = layer(x, return_attention=True) if return_attention else (layer(x), None)
            outputs.append(x)
            attention.append(weights)
        embeddings = torch.cat(outputs, dim=-1) if self.concat_layers else x
        return (embeddings, attention) if return_attention else embeddings


class BNNeckClassifier(nn.Module):
    """BatchNorm1d with a frozen (zero) bias, then a bias-free linear layer: (N, dim) -> (N, C)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim)
        self.norm.bias.requires_grad_(False)
        self.linear = nn.Linear(dim, num_classes, bias=False)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(embeddings))


@dataclass
class ModelConfig:
    """The model's part of a run's settings (:class:`~mpn_tutorial.config.TrainConfig` extends it): the
    published method. The studies' options are declared in ``controls.StudyConfig``."""

    backbone: str = setting("glyph_cnn", "the backbone: the glyph CNN, or a ResNet for the benchmarks",
                            choices=("glyph_cnn", "resnet18", "resnet50"))
    glyph_channels: tuple[int, ...] = setting((32, 64, 128, 256), "channels of the glyph CNN's blocks", low=1)
    embedding_dim: int = setting(64, "size of the embedding (512 published)", low=1)
    pretrained: bool = setting(False, "start the ResNet from ImageNet weights")
    weights_path: str | None = setting(None, "local ImageNet weights file for the ResNet", path="file")
    # Not only a memory saving: recomputing a stage in the backward pass runs its BatchNorm again,
    # which updates the running statistics a second time, so it is part of what a run computes.
    checkpointing: bool = setting(False, "activation checkpointing of the ResNet stages (less GPU memory)")
    mpn_layers: int = setting(1, "message-passing layers (0: the MPN head without them)", flag="layers", low=0)
    mpn_heads: int = setting(2, "attention heads (must divide the embedding dimension)", flag="heads", low=1)
    mpn_ff_dim: int = setting(FF_DIM, "width of the layers' feed-forward block", flag="ff-dim", low=1)
    mpn_dropout: float = setting(DROPOUT, "dropout in the message-passing layers", flag="mpn-dropout", low=0, below=1)
    zero_logit: bool = setting(False, "the release's softmax with an extra zero logit (rows sum to less than 1)")
    concat_layers: bool = setting(False, "the MPN's classifier sees every layer's output concatenated (Cars196)")


@dataclass
class ModelOutput:
    """What the model's forward pass returns for training (all tensors have N rows, the batch size).
    Logits are raw: the loss divides them by its temperature (``losses.MessagePassingObjective``)."""

    embeddings: torch.Tensor  # (N, D) backbone embedding, not normalised
    backbone_logits: torch.Tensor | None = None  # (N, C) or None without a classifier
    mpn_embeddings: torch.Tensor | None = None  # (N, out_dim) after message passing, or None without an MPN
    mpn_logits: torch.Tensor | None = None  # (N, C) or None without an MPN
    attention: list[torch.Tensor | None] = field(default_factory=list)  # per layer (num_heads, N, N), when asked


class MetricLearningModel(nn.Module):
    """Backbone -> embedding e_i -> a linear classifier (the backbone logits) and, on the L2-normalised
    embedding, an input map, the message-passing layers and a BNNeck classifier (the MPN logits).

    Built from a :class:`ModelConfig`, the number of training classes (0: no classifier, for pair and
    triplet losses), the image channels, and whether it has the MPN head. ``model(images)``: a
    :class:`ModelOutput` for training; ``retrieval_embeddings``: what retrieval compares (no MPN).
    The ``make_`` methods build the parts a study may replace (``controls.StudyModel``).
    """

    def __init__(self, config: ModelConfig, num_classes: int = 0, in_channels: int = 1, mpn_head: bool = True) -> None:
        super().__init__()
        if mpn_head and num_classes <= 0:
            raise UsageError("message passing is trained through its classifier: set num_classes > 0")
        self.config, self.num_classes = config, num_classes
        if config.backbone == "glyph_cnn":
            self.backbone = GlyphEncoder(in_channels, tuple(config.glyph_channels))
        else:
            self.backbone = ResNetBackbone(config.backbone, config.pretrained, config.weights_path,
                                           config.checkpointing)
        self.embedding = nn.Linear(self.backbone.feature_dim, config.embedding_dim)
        self.classifier = self.make_classifier(config.embedding_dim, num_classes) if num_classes > 0 else None
        self.mpn = self.make_mpn() if mpn_head else None
        self.mpn_classifier = self.make_mpn_classifier(self.mpn.out_dim, num_classes) if mpn_head else None

    def make_classifier(self, dim: int, num_classes: int) -> nn.Module:
        """The backbone's classifier: linear, (N, dim) -> (N, C)."""
        return nn.Linear(dim, num_classes)

    def make_mpn(self, attention: type[nn.Module] = BatchAttention) -> MessagePassingNetwork:
        """The message-passing network of the config, its layers' messages computed by ``attention``."""
        config = self.config
        return MessagePassingNetwork(config.embedding_dim, config.mpn_layers, config.mpn_heads, config.mpn_ff_dim,
                                     config.mpn_dropout, config.zero_logit, config.concat_layers, attention=attention)

    def make_mpn_classifier(self, dim: int, num_classes: int) -> nn.Module:
        """The MPN's classifier: a BNNeck, (N, dim) -> (N, C)."""
        return BNNeckClassifier(dim, num_classes)

    def mpn_input(self, embeddings: torch.Tensor) -> torch.Tensor:
        """What the MPN receives: the L2-normalised backbone embedding, (N, D) -> (N, D)."""
        return F.normalize(embeddings, dim=-1)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone embedding, not normalised: (N, C, H, W) -> (N, D)."""
        return self.embedding(self.backbone(images))

    def retrieval_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised backbone embedding, what retrieval compares: (N, C, H, W) -> (N, D). Call it in
        eval mode (``evaluation.evaluation_mode``) so BatchNorm uses its running statistics."""
        return F.normalize(self.embed(images), dim=1)

    def forward(self, images: torch.Tensor, return_attention: bool = False, gather=None) -> ModelOutput:
        """Training outputs for a batch of images: (N, C, H, W) -> :class:`ModelOutput`. ``gather``
        (multi-GPU training) turns this process's embeddings into the global batch's, so the
        classifiers and the MPN see every sample."""
        embeddings = self.embed(images)
        if gather is not None:
            embeddings = gather(embeddings)
        output = ModelOutput(embeddings=embeddings)
        if self.classifier is not None:
            output.backbone_logits = self.classifier(embeddings)
        if self.mpn is not None:
            refined = self.mpn(self.mpn_input(embeddings), return_attention=return_attention)
            output.mpn_embeddings, output.attention = refined if return_attention else (refined, [])
            output.mpn_logits = self.mpn_classifier(output.mpn_embeddings)
        return output

    @property
    def has_attention(self) -> bool:
        """Whether there are attention weights to look at: an MPN whose layers compute them."""
        return self.mpn is not None and len(self.mpn.layers) > 0 and getattr(self.mpn.layers[0].attention,
                                                                             "computes_weights", True)


def _check_batch(x: torch.Tensor, dim: int, name: str) -> None:
    """A batch (N, dim), or B independent batches (B, N, dim) (test-time refinement runs many at once)."""
    if x.dim() not in (2, 3) or x.shape[-1] != dim:
        raise UsageError(f"{name} expects a batch of shape (N, {dim}) or (B, N, {dim}), got {tuple(x.shape)}")
    if x.shape[-2] < 2:
        raise UsageError(f"{name}: message passing needs a batch of at least 2 samples, got {x.shape[-2]}")
