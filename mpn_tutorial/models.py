"""The message-passing network over the mini-batch, and the full model (backbones: ``backbones.py``).

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
backbone through the MPN head (attention, feed-forward network, classifier). At test time only the
backbone embedding is used (optionally refined by the trained MPN: ``evaluation.refine_embeddings``).

Published softmax detail: the official code normalises with an implicit extra logit of zero,
``a_ij = exp(s_ij) / (1 + sum_j' exp(s_ij'))``, so each row sums to slightly less than one (a node
may "attend to nothing"). ``zero_logit=True`` reproduces it; the default is the standard softmax.

Attention that learns at small scale (``bench/attention_study.md`` measures each point). With the
published settings and a backbone trained from scratch, the attention stays uniform. Options, all
off by default (the published behaviour), and what each changes:

- ``input_scale`` (of :class:`MessagePassingNetwork`): the MPN's input x_i is L2-normalised, so each
  of its D coordinates is about 1/sqrt(D), and before training the scores s_ij spread over only
  about ±0.003: the softmax is uniform and its gradient tiny. Multiplying x_i by a multiple of
  sqrt(D) gives coordinates of unit size, as a transformer expects (at 2 sqrt(D) the scores start
  at about ±0.3).
- ``identity_values`` (of :class:`MessagePassingLayer` and the network): W_v and W_o start as the
  identity, so a message starts as the attention-weighted mean of the layer's inputs (all samples',
  the receiver's own included). With random W_v (xavier, published) and uniform attention every
  value receives the same gradient, the values never become class-specific, and the scores have
  nothing to align with.
- ``similarity_prior`` (an extra option, not needed by the study's preset): W_q and W_k start as
  the identity too, so attention starts as the scaled similarity of the inputs.

The third change the study needed is not in the model: ``TrainConfig.message_warmup_epochs`` trains
the backbone with the MPN head alone before messages start (the published recipe starts from an
ImageNet-pretrained backbone instead). ``presets.GLYPHS_ATTENTION`` combines ``input_scale``,
``identity_values`` and the warm-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mpn_tutorial.backbones import IMAGENET_WEIGHT_FILES, GlyphEncoder, ResNetBackbone, load_imagenet_weights

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
        identity_values: start W_v and W_o as the identity instead of xavier (module docstring).
        similarity_prior: start W_q and W_k as the identity: attention begins as input similarity.

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
        identity_values: bool = False,
        similarity_prior: bool = False,
    ) -> None:
        super().__init__()
        if dim < 1 or num_heads < 1 or ff_dim < 1:
            raise ValueError(f"dim, num_heads and ff_dim must be at least 1, got {dim}, {num_heads}, {ff_dim}")
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.identity_values, self.similarity_prior = identity_values, similarity_prior
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
        # Xavier-uniform weights and zero biases for the attention maps, as the official code does,
        # unless an option asks for the identity (module docstring).
        identity = {"v_proj": self.identity_values, "out_proj": self.identity_values,
                    "q_proj": self.similarity_prior, "k_proj": self.similarity_prior}
        for name, use_identity in identity.items():
            projection = getattr(self, name)
            nn.init.eye_(projection.weight) if use_identity else nn.init.xavier_uniform_(projection.weight)
            nn.init.zeros_(projection.bias)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
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
        q, k, v = (self.split_heads(p(x)) for p in (self.q_proj, self.k_proj, self.v_proj))
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


@dataclass
class MessagePassingOutput:
    """What :meth:`MessagePassingNetwork.classify` returns (N rows each)."""

    features: torch.Tensor  # (N, out_dim) refined embeddings
    logits: torch.Tensor  # (N, num_classes) MPN logits
    attention: list[torch.Tensor] = field(default_factory=list)  # per layer (num_heads, N, N), if asked


class MessagePassingNetwork(nn.Module):
    """Input projection, ``num_layers`` message-passing layers, and (optionally) a BNNeck classifier.

    ``forward(x)``: embeddings (N, dim) -> refined features (N, out_dim), where ``out_dim`` is
    ``dim``, or ``dim * num_layers`` with ``concat_layers=True`` (the Cars196 preset: the classifier
    sees every layer's output). ``forward(x, return_attention=True)`` -> (features, list with one
    (num_heads, N, N) tensor per layer). ``classify(x)`` also runs the BNNeck classifier (present
    when ``num_classes`` is given) and returns a :class:`MessagePassingOutput` with the MPN logits.
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
        input_scale: float = 1.0,
        identity_values: bool = False,
        similarity_prior: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        if not input_scale > 0:
            raise ValueError(f"input_scale must be positive, got {input_scale}")
        self.dim = dim
        self.concat_layers = concat_layers
        self.input_scale = input_scale
        self.out_dim = dim * num_layers if concat_layers else dim
        self.input_proj = nn.Linear(dim, dim)
        self.layers = nn.ModuleList(
            MessagePassingLayer(dim, num_heads, ff_dim, dropout, zero_logit, pass_messages, identity_values,
                                similarity_prior)
            for _ in range(num_layers)
        )
        self.classifier = BNNeckClassifier(self.out_dim, num_classes) if num_classes is not None else None

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        _check_batch(x, self.dim, "MessagePassingNetwork")
        x = self.input_proj(x * self.input_scale)
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

    def set_pass_messages(self, enabled: bool) -> None:
        """Switch message passing on or off in every layer (off: the ablation control, or a warm-up)."""
        for layer in self.layers:
            layer.pass_messages = enabled

    def classify(self, x: torch.Tensor, return_attention: bool = False) -> MessagePassingOutput:
        """Message passing, then the MPN's own classifier: (N, dim) -> :class:`MessagePassingOutput`."""
        if self.classifier is None:
            raise ValueError("this MessagePassingNetwork has no classifier: build it with num_classes=C")
        if return_attention:
            features, attention = self(x, return_attention=True)
        else:
            features, attention = self(x), []
        return MessagePassingOutput(features, self.classifier(features), attention)


# ---------------------------------------------------------------------------------------------
# The full model
# ---------------------------------------------------------------------------------------------


@dataclass
class ModelOutput:
    """What the model's forward pass returns for training (all tensors have N rows, the batch size).

    Logits are raw: the loss divides them by its temperature (``losses.MessagePassingObjective``).
    """

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
    mpn_input_scale: float = 1.0  # the MPN's normalised input is multiplied by this (sqrt(D): unit coordinates)
    mpn_identity_values: bool = False  # W_v, W_o start as the identity
    mpn_similarity_prior: bool = False  # W_q, W_k start as the identity


class MetricLearningModel(nn.Module):
    """Backbone -> embedding -> (backbone classifier, message passing network -> MPN classifier).

    The ways in, each with one return type:

    - ``retrieval_embeddings(images)``: the L2-normalised backbone embedding (N, D), what
      retrieval uses at test time (the MPN is not run);
    - ``model(images)``: a :class:`ModelOutput` for training (embeddings, both logits, attention
      with ``return_attention=True``), whatever the train/eval mode;
    - ``message_passing(embeddings)``: the MPN alone on backbone embeddings (normalised first, as
      published), returning a :class:`MessagePassingOutput`;
    - ``embed(images)``: the backbone embedding, not normalised; ``training_outputs(embeddings)``:
      both classifiers on given embeddings (what ``forward`` does after ``embed``).
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
                input_scale=config.mpn_input_scale,
                identity_values=config.mpn_identity_values,
                similarity_prior=config.mpn_similarity_prior,
            )

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone embedding, not normalised: (N, C, H, W) -> (N, D)."""
        return self.embedding(self.backbone(images))

    def retrieval_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised backbone embedding, what retrieval compares: (N, C, H, W) -> (N, D).

        Call it in eval mode (``model.eval()``) so BatchNorm uses its running statistics.
        """
        return F.normalize(self.embed(images), dim=1)

    def forward(self, images: torch.Tensor, return_attention: bool = False, gather=None) -> ModelOutput:
        """Training outputs for a batch of images: (N, C, H, W) -> :class:`ModelOutput`.

        ``gather`` (multi-GPU training only): a function that turns this process's embeddings
        into the global batch's, so the classifier and the MPN see every sample.
        """
        embeddings = self.embed(images)
        if gather is not None:
            embeddings = gather(embeddings)
        return self.training_outputs(embeddings, return_attention)

    def training_outputs(self, embeddings: torch.Tensor, return_attention: bool = False) -> ModelOutput:
        """Backbone classifier and MPN on backbone embeddings (N, D) -> :class:`ModelOutput`."""
        output = ModelOutput(embeddings=embeddings)
        if self.classifier is not None:
            output.backbone_logits = self.classifier(embeddings)
        if self.mpn is not None:
            passed = self.message_passing(embeddings, return_attention)
            output.mpn_logits, output.attention = passed.logits, passed.attention
        return output

    def message_passing(self, embeddings: torch.Tensor, return_attention: bool = False) -> MessagePassingOutput:
        """The MPN on backbone embeddings (N, D): normalised first, as published, then refined and
        classified (:meth:`MessagePassingNetwork.classify`)."""
        if self.mpn is None:
            raise ValueError("this model has no message passing network (train it with loss='mpn')")
        return self.mpn.classify(F.normalize(embeddings, dim=1), return_attention)


__all__ = [
    "IMAGENET_WEIGHT_FILES",
    "BNNeckClassifier",
    "GlyphEncoder",
    "MessagePassingLayer",
    "MessagePassingNetwork",
    "MessagePassingOutput",
    "MetricLearningModel",
    "ModelConfig",
    "ModelOutput",
    "ResNetBackbone",
    "load_imagenet_weights",
]
