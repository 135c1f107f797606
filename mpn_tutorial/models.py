"""The message-passing network over the mini-batch, and the full model (backbones: ``backbones.py``).

The method (Seidenschwarz, Elezi, Leal-Taixé, ICML 2021): a batch of N images gives N embeddings.
Treat them as the nodes of a fully connected graph (with self-loops) and let every node attend to
every other node with multi-head dot-product attention, a transformer block over the *batch*:

    q_i = W_q x_i,  k_j = W_k x_j,  v_j = W_v x_j                    (per head h, d = dim / heads)
    s_ij = q_i · k_j / sqrt(d)                                          (attention score)
    a_ij = exp(s_ij) / sum_j' exp(s_ij')                                (softmax over the whole batch)
    m_i  = W_o concat_h( sum_j a_ij v_j )                               (message received by i)
    x_i <- LayerNorm(x_i + Dropout(m_i))                                (residual 1: the messages)
    x_i <- LayerNorm(x_i + Dropout(W_2 Dropout(ReLU(W_1 x_i))))         (residual 2: feed-forward)

:class:`BatchAttention` is the first four lines, :class:`FeedForward` the last one, and
:meth:`MessagePassingLayer.forward` the two residual lines. A classifier on the refined embeddings
gives the MPN logits; a cross-entropy on them trains the backbone through the MPN head. At test time
only the backbone embedding is used (optionally refined by the trained MPN:
``evaluation.refine_embeddings``).

Published softmax detail: the official code normalises with an implicit extra logit of zero,
``a_ij = exp(s_ij) / (1 + sum_j' exp(s_ij'))``, so each row sums to slightly less than one (a node
may "attend to nothing"). ``zero_logit=True`` reproduces it; the default is the standard softmax.

**Options of the studies** (``bench/messages_study.md`` measures each; all off by default, which is
the published method). They sit in :class:`AttentionOptions` and in the network's ``input_scale``
and ``input_map``, never inside the published lines above:

- ``input_scale``: the MPN's input is L2-normalised, so before training the scores spread over only
  about ±0.003 and the softmax is uniform; ``input_scale`` = a multiple of sqrt(D) gives the
  coordinates unit size, as a transformer expects.
- ``identity_values``: W_v and W_o start as the identity, so a message starts as the attention-weighted
  mean of the layer's inputs. With random W_v and uniform attention every value gets the same
  gradient and the scores have nothing to align with (a saddle).
- ``similarity_prior``: W_q and W_k start as the identity: attention starts as the inputs' similarity.
- ``zero_out``: W_o starts at zero, so messages start at exactly zero (the layer computes what it
  computes with messages off) and the gradient decides whether they grow.
- ``attention="oracle"``: the weights are not learned but given by the labels, a_ij = 1/n_c for the
  n_c samples j of i's class in the batch (i included), 0 otherwise: every sample receives the mean of
  its class. A control, for training only (it needs the labels): the best any attention could do.
- ``input_map=False`` and ``num_layers=0`` take parts of the head away (the decomposition study).

The message warm-up (``TrainConfig.message_warmup_epochs``) is a switch of the training loop:
:meth:`MessagePassingNetwork.set_pass_messages`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mpn_tutorial.backbones import IMAGENET_WEIGHT_FILES, GlyphEncoder, ResNetBackbone, load_imagenet_weights

ATTENTION_MODES = ("learned", "oracle")


@dataclass(frozen=True)
class AttentionOptions:
    """The studies' options of a layer's attention (module docstring); the defaults are the published method."""

    attention: str = "learned"  # "learned" (published) | "oracle": uniform over the sample's class (needs labels)
    identity_values: bool = False  # W_v and W_o start as the identity
    similarity_prior: bool = False  # W_q and W_k start as the identity
    zero_out: bool = False  # W_o starts at zero: messages start at 0

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_MODES)}, got {self.attention!r}")


PUBLISHED = AttentionOptions()

class BatchAttention(nn.Module):
    """Multi-head dot-product attention over the batch: x (N, dim) -> messages m (N, dim).

    ``forward(x, return_attention=True)`` also returns the weights a (num_heads, N, N), where
    ``a[h, i, j]`` is the weight sample i gives to sample j's value in head h.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.1, zero_logit: bool = False,
                 options: AttentionOptions = PUBLISHED) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.zero_logit, self.dropout, self.options = zero_logit, dropout, options
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.attention_dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Published: Xavier-uniform weights and zero biases, as the official code. The studies'
        # options replace some of them (module docstring).
        start = {"q_proj": "identity" if self.options.similarity_prior else "xavier",
                 "k_proj": "identity" if self.options.similarity_prior else "xavier",
                 "v_proj": "identity" if self.options.identity_values else "xavier",
                 "out_proj": "zero" if self.options.zero_out else "identity" if self.options.identity_values
                 else "xavier"}
        for name, how in start.items():
            projection = getattr(self, name)
            {"xavier": nn.init.xavier_uniform_, "identity": nn.init.eye_, "zero": nn.init.zeros_}[how](
                projection.weight)
            nn.init.zeros_(projection.bias)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(N, dim) -> (num_heads, N, head_dim) (and (B, N, dim) -> (B, num_heads, N, head_dim))."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-3, -2)

    def attention_weights(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Softmax of the scaled scores: q, k (num_heads, N, head_dim) -> (num_heads, N, N)."""
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        if self.zero_logit:
            # exp(s_ij) / (1 + sum_j exp(s_ij)): a softmax over the scores plus one logit of 0
            zeros = scores.new_zeros(scores.shape[:-1] + (1,))
            return torch.softmax(torch.cat([scores, zeros], dim=-1), dim=-1)[..., :-1]
        return torch.softmax(scores, dim=-1)

    def forward(self, x: torch.Tensor, return_attention: bool = False, labels: torch.Tensor | None = None):
        q, k, v = (self.split_heads(projection(x)) for projection in (self.q_proj, self.k_proj, self.v_proj))
        if self.options.attention == "oracle":
            weights = oracle_weights(labels, self.num_heads, x)
            heads = self.attention_dropout(weights) @ v
        elif return_attention:
            weights = self.attention_weights(q, k)  # (H, N, N)
            heads = self.attention_dropout(weights) @ v  # (H, N, head_dim)
        else:  # the same computation in one fused kernel
            weights = None
            if self.zero_logit:
                # A key of zeros scores exactly 0 and its value of zeros adds nothing: the fused
                # kernel then computes the zero-logit softmax.
                zeros = k.new_zeros(k.shape[:-2] + (1, self.head_dim))
                k, v = torch.cat([k, zeros], dim=-2), torch.cat([v, zeros], dim=-2)
            drop = self.dropout if self.training else 0.0
            heads = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        messages = self.out_proj(heads.transpose(-3, -2).reshape(x.shape))  # concat over heads, then W_o
        return messages, weights


def oracle_weights(labels: torch.Tensor | None, num_heads: int, like: torch.Tensor) -> torch.Tensor:
    """The oracle's attention: a_ij = 1 / n_c for the n_c samples j of i's class (i included), in every
    head: labels (N,) -> (num_heads, N, N)."""
    if labels is None or like.dim() != 2:
        raise ValueError("oracle attention needs the batch's labels: call the model with labels=... "
                         "(the training loop passes them); it is a control for training, not for test time")
    same_class = (labels[:, None] == labels[None, :]).to(like.dtype)
    return (same_class / same_class.sum(dim=1, keepdim=True)).expand(num_heads, -1, -1)


class FeedForward(nn.Module):
    """The position-wise feed-forward network: (N, dim) -> (N, dim), ``Dropout(W_2 Dropout(ReLU(W_1 x)))``."""

    def __init__(self, dim: int, ff_dim: int = 2048, dropout: float = 0.1) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, ff_dim)
        self.linear2 = nn.Linear(ff_dim, dim)
        self.hidden_dropout = nn.Dropout(dropout)
        self.output_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dropout(self.linear2(self.hidden_dropout(F.relu(self.linear1(x)))))


class MessagePassingLayer(nn.Module):
    """One round of message passing over the batch: a post-norm transformer block whose "sequence" is
    the batch (module docstring). x (N, dim) -> (N, dim).

    ``layer(x, return_attention=True)`` -> (x, weights (num_heads, N, N)). ``pass_messages = False``
    zeroes the messages (the messages-off control, or the warm-up): nothing flows between samples,
    and the layer is ``LN(LN(x) + FFN(LN(x)))`` of each sample alone.
    """

    def __init__(self, dim: int, num_heads: int, ff_dim: int = 2048, dropout: float = 0.1, zero_logit: bool = False,
                 *, options: AttentionOptions = PUBLISHED) -> None:
        super().__init__()
        if dim < 1 or num_heads < 1 or ff_dim < 1:
            raise ValueError(f"dim, num_heads and ff_dim must be at least 1, got {dim}, {num_heads}, {ff_dim}")
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.attention = BatchAttention(dim, num_heads, dropout, zero_logit, options)
        self.feed_forward = FeedForward(dim, ff_dim, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.message_dropout = nn.Dropout(dropout)
        self.pass_messages = True
        self._register_load_state_dict_pre_hook(_accept_flat_names)

    def forward(self, x: torch.Tensor, return_attention: bool = False, labels: torch.Tensor | None = None):
        _check_batch(x, self.dim, "MessagePassingLayer")
        if self.pass_messages or return_attention:
            messages, weights = self.attention(x, return_attention, labels)
        if not self.pass_messages:
            messages = torch.zeros_like(x)  # the control: nothing flows between samples
        x = self.norm1(x + self.message_dropout(messages))
        x = self.norm2(x + self.feed_forward(x))
        return (x, weights) if return_attention else x

    # The names of the API contract (DESIGN.md §3) and of the paper's symbols, on the layer itself.
    q_proj = property(lambda self: self.attention.q_proj, doc="W_q: nn.Linear(dim, dim)")
    k_proj = property(lambda self: self.attention.k_proj, doc="W_k: nn.Linear(dim, dim)")
    v_proj = property(lambda self: self.attention.v_proj, doc="W_v: nn.Linear(dim, dim)")
    out_proj = property(lambda self: self.attention.out_proj, doc="W_o: nn.Linear(dim, dim)")
    linear1 = property(lambda self: self.feed_forward.linear1, doc="W_1: nn.Linear(dim, ff_dim)")
    linear2 = property(lambda self: self.feed_forward.linear2, doc="W_2: nn.Linear(ff_dim, dim)")
    zero_logit = property(lambda self: self.attention.zero_logit)

    split_heads = property(lambda self: self.attention.split_heads, doc="(N, dim) -> (num_heads, N, head_dim)")
    attention_weights = property(lambda self: self.attention.attention_weights, doc="softmax of the scaled scores")


# Before the layer had its named pieces, its parameters sat on it directly ("q_proj.weight", "linear1.bias"):
# such state dicts (older checkpoints, code written against the flat names) still load.
_FLAT_NAMES = {"q_proj": "attention.q_proj", "k_proj": "attention.k_proj", "v_proj": "attention.v_proj",
               "out_proj": "attention.out_proj", "linear1": "feed_forward.linear1", "linear2": "feed_forward.linear2"}


def _accept_flat_names(state_dict, prefix, *args) -> None:
    for key in [key for key in state_dict if key.startswith(prefix)]:
        head, _, rest = key[len(prefix):].partition(".")
        if head in _FLAT_NAMES:
            state_dict[f"{prefix}{_FLAT_NAMES[head]}.{rest}"] = state_dict.pop(key)


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
class MessagePassingOutput:
    """What :meth:`MessagePassingNetwork.classify` returns: embeddings after message passing (N, out_dim),
    MPN logits (N, C), attention per layer (num_heads, N, N) when asked."""

    embeddings: torch.Tensor
    logits: torch.Tensor
    attention: list[torch.Tensor] = field(default_factory=list)


class MessagePassingNetwork(nn.Module):
    """Input map, ``num_layers`` message-passing layers, and (optionally) a BNNeck classifier.

    ``forward(x)``: embeddings (N, dim) -> refined embeddings (N, out_dim), where ``out_dim`` is
    ``dim``, or ``dim * num_layers`` with ``concat_layers=True`` (the Cars196 preset: the classifier
    sees every layer's output). ``forward(x, return_attention=True)`` -> (embeddings, list with one
    (num_heads, N, N) tensor per layer). ``classify(x)`` also runs the BNNeck classifier (present
    when ``num_classes`` is given). ``labels`` (N,) are needed by oracle attention only.
    """

    def __init__(self, dim: int, num_layers: int, num_heads: int, num_classes: int | None = None,
                 ff_dim: int = 2048, dropout: float = 0.1, zero_logit: bool = False, concat_layers: bool = False, *,
                 input_scale: float = 1.0, input_map: bool = True, options: AttentionOptions = PUBLISHED) -> None:
        super().__init__()
        if num_layers < 0 or (concat_layers and num_layers < 1):
            raise ValueError(f"num_layers must be at least 0 (1 with concat_layers), got {num_layers}")
        if not input_scale > 0:
            raise ValueError(f"input_scale must be positive, got {input_scale}")
        self.dim, self.concat_layers, self.input_scale = dim, concat_layers, input_scale
        self.out_dim = dim * num_layers if concat_layers else dim
        self.input_proj = nn.Linear(dim, dim) if input_map else nn.Identity()
        self.layers = nn.ModuleList(
            MessagePassingLayer(dim, num_heads, ff_dim, dropout, zero_logit, options=options)
            for _ in range(num_layers)
        )
        self.classifier = BNNeckClassifier(self.out_dim, num_classes) if num_classes is not None else None

    def forward(self, x: torch.Tensor, return_attention: bool = False, labels: torch.Tensor | None = None):
        _check_batch(x, self.dim, "MessagePassingNetwork")
        x = self.input_proj(x * self.input_scale)
        outputs, attention = [], []
        for layer in self.layers:
            x, weights = layer(x, return_attention=True, labels=labels) if return_attention else (
                layer(x, labels=labels), None)
            outputs.append(x)
            attention.append(weights)
        embeddings = torch.cat(outputs, dim=-1) if self.concat_layers else x
        return (embeddings, attention) if return_attention else embeddings

    def set_pass_messages(self, enabled: bool) -> None:
        """Switch message passing on or off in every layer (off: the control, or a warm-up)."""
        for layer in self.layers:
            layer.pass_messages = enabled

    def classify(self, x: torch.Tensor, return_attention: bool = False,
                 labels: torch.Tensor | None = None) -> MessagePassingOutput:
        """Message passing, then the MPN's own classifier: (N, dim) -> :class:`MessagePassingOutput`."""
        if self.classifier is None:
            raise ValueError("this MessagePassingNetwork has no classifier: build it with num_classes=C")
        if return_attention:
            embeddings, attention = self(x, return_attention=True, labels=labels)
        else:
            embeddings, attention = self(x, labels=labels), []
        return MessagePassingOutput(embeddings, self.classifier(embeddings), attention)


@dataclass
class ModelConfig:
    """The model's part of a run's settings (:class:`~mpn_tutorial.config.TrainConfig` extends it)."""

    backbone: str = "glyph_cnn"  # glyph_cnn | resnet18 | resnet50
    glyph_channels: tuple[int, ...] = (32, 64, 128, 256)
    embedding_dim: int = 64
    pretrained: bool = False
    weights_path: str | None = field(default=None, metadata={"path": True})  # local ImageNet weights file
    # Activation checkpointing of the ResNet stages. Not only a memory saving: recomputing a stage in
    # the backward pass runs its BatchNorm again, which updates the running statistics a second time.
    checkpointing: bool = False
    mpn_layers: int = 1  # 0: the head without message-passing layers (decomposition study)
    mpn_heads: int = 2
    mpn_ff_dim: int = 2048
    mpn_dropout: float = 0.1
    zero_logit: bool = False
    concat_layers: bool = False
    mpn_pass_messages: bool = True  # False: the MPN head without message passing (the control)
    # the studies' options (module docstring); the defaults are the published method
    mpn_input_scale: float = 1.0  # multiply the MPN's normalised input by this; sqrt(embedding_dim): unit coordinates
    mpn_input_map: bool = True  # False: no Linear(D, D) before the layers (decomposition study)
    mpn_attention: str = "learned"  # learned | oracle (attention given by the labels: a training-time bound)
    mpn_identity_values: bool = False  # W_v and W_o start as the identity
    mpn_similarity_prior: bool = False  # W_q and W_k start as the identity
    mpn_zero_out: bool = False  # W_o starts at zero: messages start at 0, the gradient decides

    def attention_options(self) -> AttentionOptions:
        return AttentionOptions(self.mpn_attention, self.mpn_identity_values, self.mpn_similarity_prior,
                                self.mpn_zero_out)


@dataclass
class ModelOutput:
    """What the model's forward pass returns for training (all tensors have N rows, the batch size).

    Logits are raw: the loss divides them by its temperature (``losses.MessagePassingObjective``).
    """

    embeddings: torch.Tensor  # (N, D) backbone embedding, not normalised
    backbone_logits: torch.Tensor | None = None  # (N, C) or None without a classifier
    mpn_logits: torch.Tensor | None = None  # (N, C) or None without an MPN
    attention: list[torch.Tensor] = field(default_factory=list)  # per layer (num_heads, N, N)


class MetricLearningModel(nn.Module):
    """Backbone -> embedding -> (backbone classifier, message passing network -> MPN classifier).

    Built from a :class:`ModelConfig`, the number of training classes (0: no classifier, for pair and
    triplet losses), the image channels, and whether it has the MPN head. ``retrieval_embeddings``:
    the normalised backbone embedding retrieval uses (no MPN); ``model(images)``: a :class:`ModelOutput`
    for training; ``message_passing(embeddings)``: the MPN alone (on normalised embeddings, as
    published); ``embed``: the backbone embedding; ``classify(embeddings)``: both classifiers on it.
    """

    def __init__(self, config: ModelConfig, num_classes: int = 0, in_channels: int = 1,
                 mpn_head: bool = True) -> None:
        super().__init__()
        self.config, self.num_classes = config, num_classes
        if config.backbone == "glyph_cnn":
            self.backbone = GlyphEncoder(in_channels, tuple(config.glyph_channels))
        else:
            self.backbone = ResNetBackbone(config.backbone, config.pretrained, config.weights_path,
                                           config.checkpointing)
        self.embedding = nn.Linear(self.backbone.feature_dim, config.embedding_dim)
        self.classifier = nn.Linear(config.embedding_dim, num_classes) if num_classes > 0 else None
        self.mpn = None
        if mpn_head:
            if num_classes <= 0:
                raise ValueError("message passing is trained through its classifier: set num_classes > 0")
            self.mpn = MessagePassingNetwork(
                config.embedding_dim, config.mpn_layers, config.mpn_heads, num_classes, config.mpn_ff_dim,
                config.mpn_dropout, config.zero_logit, config.concat_layers, input_scale=config.mpn_input_scale,
                input_map=config.mpn_input_map, options=config.attention_options(),
            )
            self.mpn.set_pass_messages(config.mpn_pass_messages)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone embedding, not normalised: (N, C, H, W) -> (N, D)."""
        return self.embedding(self.backbone(images))

    def retrieval_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised backbone embedding, what retrieval compares: (N, C, H, W) -> (N, D).

        Call it in eval mode (``model.eval()``) so BatchNorm uses its running statistics.
        """
        return F.normalize(self.embed(images), dim=1)

    def forward(self, images: torch.Tensor, return_attention: bool = False, labels: torch.Tensor | None = None,
                gather=None) -> ModelOutput:
        """Training outputs for a batch of images: (N, C, H, W) -> :class:`ModelOutput`.

        ``gather`` (multi-GPU training): turns this process's embeddings into the global batch's, so
        the classifiers and the MPN see every sample; ``labels`` must then be the global batch's.
        """
        embeddings = self.embed(images)
        if gather is not None:
            embeddings = gather(embeddings)
        return self.classify(embeddings, return_attention, labels)

    def classify(self, embeddings: torch.Tensor, return_attention: bool = False,
                 labels: torch.Tensor | None = None) -> ModelOutput:
        """Backbone classifier and MPN on backbone embeddings (N, D) -> :class:`ModelOutput`."""
        output = ModelOutput(embeddings=embeddings)
        if self.classifier is not None:
            output.backbone_logits = self.classifier(embeddings)
        if self.mpn is not None:
            passed = self.message_passing(embeddings, return_attention, labels)
            output.mpn_logits, output.attention = passed.logits, passed.attention
        return output

    def message_passing(self, embeddings: torch.Tensor, return_attention: bool = False,
                        labels: torch.Tensor | None = None) -> MessagePassingOutput:
        """The MPN on backbone embeddings (N, D): normalised first, as published, then refined and
        classified (:meth:`MessagePassingNetwork.classify`)."""
        if self.mpn is None:
            raise ValueError("this model has no message passing network (train it with loss='mpn')")
        return self.mpn.classify(F.normalize(embeddings, dim=1), return_attention, labels)


def _check_batch(x: torch.Tensor, dim: int, name: str) -> None:
    """A batch (N, dim), or B independent batches (B, N, dim) (test-time refinement runs many at once)."""
    if x.dim() not in (2, 3) or x.shape[-1] != dim:
        raise ValueError(f"{name} expects a batch of shape (N, {dim}) or (B, N, {dim}), got {tuple(x.shape)}")
    if x.shape[-2] < 2:
        raise ValueError(f"{name}: message passing needs a batch of at least 2 samples, got {x.shape[-2]}")


__all__ = ["ATTENTION_MODES", "IMAGENET_WEIGHT_FILES", "PUBLISHED", "AttentionOptions", "BNNeckClassifier",
           "BatchAttention", "FeedForward", "GlyphEncoder", "MessagePassingLayer", "MessagePassingNetwork",
           "MessagePassingOutput", "MetricLearningModel", "ModelConfig", "ModelOutput", "ResNetBackbone",
           "load_imagenet_weights", "oracle_weights"]
