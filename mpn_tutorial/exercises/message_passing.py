"""03: the method, built by the learner: one head's attention weights, a message-passing layer's forward,
the training objective; and, as an extra, the release's softmax with its extra zero logit."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from mpn_tutorial.exercises.base import (
    Exercise,
    Mistake,
    as_array,
    constant,
    copied,
    evaluated,
    generator,
    on_fresh_inputs,
    same_shape,
)
from mpn_tutorial.models import MessagePassingLayer, attention_weights, merge_heads, split_heads


def _close(yours: np.ndarray, other) -> bool:
    other = as_array(other, "a reference")
    return yours.shape == other.shape and np.allclose(yours, other, atol=1e-5)


# One head's attention weights


def _weights(x, W_q, b_q, W_k, b_k, scale: float | None = None, dim: int = -1, biases: bool = True):
    """One head's weights as the check computes them, and as the declared mistakes compute them."""
    q, k = F.linear(x, W_q, b_q if biases else None), F.linear(x, W_k, b_k if biases else None)
    scale = math.sqrt(q.shape[-1]) if scale is None else scale
    return torch.softmax(q @ k.T / scale, dim=dim)


def _compare_head(answer, x, W_q, b_q, W_k, b_k) -> np.ndarray:
    yours = as_array(evaluated(answer, x, W_q, b_q, W_k, b_k), "the weights")
    q, k = F.linear(x, W_q, b_q), F.linear(x, W_k, b_k)
    expected = as_array(attention_weights(q[None], k[None])[0], "the library's weights")
    same_shape(yours, expected, "the weights (one row per sample, one column per sample)")
    d = q.shape[-1]
    hints = (
        (dict(scale=1.0), f"the scores are not scaled: divide q_i · k_j by sqrt(d) = sqrt({d}), the head's dimension"),
        (dict(scale=d), "divide the scores by sqrt(d), not by d"),
        (dict(scale=math.sqrt(x.shape[-1])),
         f"d is the head's dimension ({d}, the rows of W_q), not the embedding's ({x.shape[-1]})"),
        (dict(dim=0), "each row must sum to 1: take the softmax over the samples j a query attends to (dim=-1), "
                      "not over the queries (dim=0)"),
        (dict(biases=False), "q = x W_q^T + b_q and k = x W_k^T + b_k: add the biases"),
    )
    for mistake, hint in hints:
        mistaken = _weights(x, W_q, b_q, W_k, b_k, **mistake)
        if not _close(expected, mistaken) and _close(yours, mistaken):
            raise AssertionError(hint)
    if not np.allclose(yours, expected, atol=1e-5):
        raise AssertionError("your weights differ from the library's (models.attention_weights on the same q and k): "
                             "q = x W_q^T + b_q, k = x W_k^T + b_k, scores q k^T / sqrt(d), a softmax over each row")
    return yours


def _fresh_head():
    g = generator()
    x, W_q, W_k = torch.randn(7, 12, generator=g), torch.randn(4, 12, generator=g), torch.randn(4, 12, generator=g)
    return x, W_q, torch.randn(4, generator=g), W_k, torch.randn(4, generator=g)


def _head_weights(answer, x, W_q, b_q, W_k, b_k) -> str:
    yours = _compare_head(answer, x, W_q, b_q, W_k, b_k)
    on_fresh_inputs(lambda: _compare_head(answer, *_fresh_head()), "7 samples of 12 dimensions and a head of 4")
    return (f"your head's weights equal the library's; the largest weight a sample gives is {yours.max():.3f} "
            f"(uniform: {1 / len(yours):.3f})")


def _example_head():
    g = generator(0)
    return (torch.randn(12, 8, generator=g), torch.randn(4, 8, generator=g), torch.zeros(4),
            torch.randn(4, 8, generator=g), torch.zeros(4))


# A message-passing layer's forward


def _forward(x, layer, *, residual1=True, residual2=True, scale=True, out_map=True, relu=True, merge=merge_heads):
    """The layer's forward, by its named pieces, as the check computes it and as the declared mistakes do."""
    heads = layer.num_heads
    q, k, v = (split_heads(projection(x), heads) for projection in (layer.q_proj, layer.k_proj, layer.v_proj))
    scores = q @ k.transpose(-1, -2) / (math.sqrt(q.shape[-1]) if scale else 1.0)
    messages = merge(torch.softmax(scores, dim=-1) @ v)
    if out_map:
        messages = layer.out_proj(messages)
    h = layer.norm1(x + messages if residual1 else messages)
    hidden = layer.feed_forward.linear1(h)
    update = layer.feed_forward.linear2(torch.relu(hidden) if relu else hidden)
    return layer.norm2(h + update if residual2 else update)


def _compare_layer(answer, x, layer) -> np.ndarray:
    with torch.no_grad():
        yours = as_array(evaluated(answer, x, layer), "the layer's output")
        expected = as_array(layer.eval()(x), "MessagePassingLayer's output")
        same_shape(yours, expected, "the output (one row per sample)")
        hints = (
            (dict(residual1=False), "the first residual is missing: x <- LayerNorm(x + m), the messages added to x"),
            (dict(residual2=False), "the second residual is missing: h <- LayerNorm(h + FFN(h))"),
            (dict(scale=False), "scale the scores by 1 / sqrt(d), d the head's dimension"),
            (dict(out_map=False), "the concatenated heads go through W_o (layer.out_proj) before they are added"),
            (dict(relu=False), "the feed-forward block is W_2 ReLU(W_1 h): the ReLU is missing"),
            (dict(merge=lambda heads: heads.reshape(heads.shape[-2], -1)),
             "reshaping (heads, N, d) straight to (N, D) mixes samples: move the head axis back first (merge_heads)"),
        )
        for mistake, hint in hints:
            mistaken = _forward(x, layer, **mistake)
            if not _close(expected, mistaken) and _close(yours, mistaken):
                raise AssertionError(hint)
    if not np.allclose(yours, expected, atol=1e-5):
        raise AssertionError("your output differs from MessagePassingLayer's: split the heads, weights "
                             "softmax(q k^T / sqrt(d)), weighted values, merge the heads, W_o, x + m and LayerNorm, "
                             "then h + FFN(h) and LayerNorm")
    return yours


def _layer_forward(answer, x, layer) -> str:
    _compare_layer(answer, x, layer)
    with torch.random.fork_rng(devices=[]):  # a layer of another size, every weight random (biases, norms' too)
        torch.manual_seed(2024)
        fresh = MessagePassingLayer(12, 3, ff_dim=20, dropout=0.0).eval()
        with torch.no_grad():
            for parameter in fresh.parameters():
                parameter.copy_(torch.randn_like(parameter) * 0.5)
    for size in (5, 9):  # batches of other sizes: the layer is defined on any set of samples
        batch = torch.randn(size, 12, generator=generator(size))
        on_fresh_inputs(lambda batch=batch: _compare_layer(answer, batch, fresh),
                        f"a batch of {size} samples through a 3-head layer of 12 dimensions")
    return f"your forward pass equals MessagePassingLayer's on the notebook's {len(x)} samples and on the check's own"


def _example_layer():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        layer = MessagePassingLayer(8, 2, ff_dim=16, dropout=0.0).eval()
    return torch.randn(6, 8, generator=generator(0)), layer


# The objective


def _compare_objective(answer, backbone_logits, mpn_logits, labels, temperature, smoothing) -> float:
    from mpn_tutorial.losses import MessagePassingObjective

    yours = float(as_array(evaluated(answer, backbone_logits, mpn_logits, labels, temperature, smoothing), "the loss"))
    expected = float(MessagePassingObjective(temperature, smoothing)(backbone_logits, mpn_logits, labels))

    def term(logits, scale=1 / temperature, eps=smoothing):
        return float(F.cross_entropy(logits * scale, labels, label_smoothing=eps))

    hints = (
        (term(backbone_logits, temperature) + term(mpn_logits, temperature),
         "divide the logits by the temperature T (a small T sharpens the softmax), don't multiply"),
        (term(backbone_logits, eps=0.0) + term(mpn_logits, eps=0.0),
         "the cross-entropy is label-smoothed: label_smoothing=smoothing"),
        (term(backbone_logits), "the objective has two terms: the backbone's logits and the MPN's"),
        (term(mpn_logits), "the objective has two terms: the backbone's logits and the MPN's"),
        ((term(backbone_logits) + term(mpn_logits)) / 2, "add the two terms (weight 1 each), don't average them"),
        (term(backbone_logits, 1.0) + term(mpn_logits, 1.0), "divide the logits by the temperature T"),
    )
    for mistaken, hint in hints:
        if abs(mistaken - expected) > 1e-6 and abs(yours - mistaken) < 1e-6:
            raise AssertionError(hint)
    if abs(yours - expected) > 1e-5:
        raise AssertionError(f"your loss {yours:.4f}, MessagePassingObjective's {expected:.4f}: CE_eps(z_b / T, y) + "
                             "CE_eps(z_m / T, y), each averaged over the batch")
    return yours


def _objective(answer, backbone_logits, mpn_logits, labels, temperature, smoothing) -> str:
    yours = _compare_objective(answer, backbone_logits, mpn_logits, labels, temperature, smoothing)
    g = generator()
    fresh = (torch.randn(10, 7, generator=g) * 3, torch.randn(10, 7, generator=g) * 3,
             torch.randint(0, 7, (10,), generator=g), 0.3, 0.2)
    on_fresh_inputs(lambda: _compare_objective(answer, *fresh), "10 samples of 7 classes, T = 0.3 and smoothing 0.2")
    return f"L = {yours:.4f}, as MessagePassingObjective computes it (and on logits of the check's own)"


def _example_logits():
    g = generator(0)
    return torch.randn(12, 5, generator=g), torch.randn(12, 5, generator=g), torch.arange(5).repeat(3)[:12], 0.2, 0.1


# An extra: the release's softmax with an implicit extra zero logit


def _compare_zero_logit(answer, scores, expected) -> np.ndarray:
    yours = as_array(evaluated(answer, scores), "the weights")
    expected = as_array(expected, "the reference")
    same_shape(yours, expected, "the weights")
    exponentials = torch.as_tensor(scores, dtype=torch.float64).exp()
    if np.allclose(yours, torch.softmax(torch.as_tensor(scores, dtype=torch.float64), dim=-1).numpy(), atol=1e-6):
        raise AssertionError("that is the standard softmax; the published one adds exp(0) = 1 to each denominator")
    if np.allclose(yours, (exponentials / (1 + exponentials.sum(dim=0, keepdim=True))).numpy(), atol=1e-6):
        raise AssertionError("you summed each column (dim=0): the weights sample i gives are normalised over the "
                             "samples j it attends to, so sum each row (dim=-1, keepdim=True)")
    if np.allclose(yours, (exponentials / (1 + exponentials.sum(dim=-1))).numpy(), atol=1e-6):
        raise AssertionError("the row sums lost their dimension: without keepdim=True, sum(dim=-1) has shape (N,) and "
                             "broadcasts like a row (1, N), so weight (i, j) is divided by row j's sum instead of "
                             "row i's. Sum with keepdim=True, shape (N, 1)")
    if not np.allclose(yours, expected, atol=1e-6):
        raise AssertionError("your weights differ from MessagePassingLayer(zero_logit=True)'s")
    return yours


def _zero_logit_softmax(answer, scores, reference) -> str:
    yours = _compare_zero_logit(answer, scores, reference)
    q, k = torch.randn(2, 7, 4, generator=generator()) * 2
    on_fresh_inputs(lambda: _compare_zero_logit(answer, q @ k.T / 2, attention_weights(q, k, zero_logit=True)),
                    "the scores of 7 random queries and keys")
    sums = yours.sum(axis=-1)
    return f"rows now sum to {sums.min():.3f} … {sums.max():.3f}, below 1 (and for scores of the check's own)"


def _example_scores():
    q, k = torch.randn(2, 6, 8, generator=generator(0))
    return q @ k.T / np.sqrt(8), attention_weights(q, k, zero_logit=True)


def _mistaken_layer(**mistake):
    return lambda inputs: lambda x, layer: _forward(x, layer, **mistake)


def _mistaken_objective(scale_by_temperature: bool = False, smoothing: bool = True, halve: bool = False):
    def loss(backbone_logits, mpn_logits, labels, temperature, eps):
        scale = temperature if scale_by_temperature else 1 / temperature
        terms = [F.cross_entropy(logits * scale, labels, label_smoothing=eps if smoothing else 0.0)
                 for logits in (backbone_logits, mpn_logits)]
        return sum(terms) / (2 if halve else 1)
    return lambda inputs: loss


EXERCISES = {
    "head_weights": Exercise(
        "03", "q = x @ W_q.T + b_q and k likewise; the scores q @ k.T divided by sqrt(d), d = q.shape[-1]; then "
        "torch.softmax over each row (dim=-1)", _head_weights, _example_head, (
            Mistake("scores not divided by sqrt(d)",
                    lambda inputs: lambda *a: _weights(*a, scale=1.0), "not scaled"),
            Mistake("scores divided by d instead of sqrt(d)",
                    lambda inputs: lambda *a: _weights(*a, scale=a[1].shape[0]), "not by d"),
            Mistake("the softmax over the queries (dim=0)", lambda inputs: lambda *a: _weights(*a, dim=0), "dim=0"),
            Mistake("the biases left out", lambda inputs: lambda *a: _weights(*a, biases=False), "add the biases"),
            copied("the notebook's weights, returned for any batch", "head_weights"),
        )),
    "layer_forward": Exercise(
        "03", "follow the equations: split_heads of q, k, v; softmax(q k^T / sqrt(d)); weights @ v; merge_heads; "
        "layer.out_proj; layer.norm1(x + m); then layer.norm2(h + linear2(relu(linear1(h))))", _layer_forward,
        _example_layer, (
            Mistake("no residual around the messages", _mistaken_layer(residual1=False), "first residual"),
            Mistake("no residual around the feed-forward block", _mistaken_layer(residual2=False), "second residual"),
            Mistake("the heads concatenated with a plain reshape",
                    _mistaken_layer(merge=lambda heads: heads.reshape(heads.shape[-2], -1)), "merge_heads"),
            Mistake("W_o left out", _mistaken_layer(out_map=False), "W_o"),
            Mistake("no ReLU in the feed-forward block", _mistaken_layer(relu=False), "ReLU"),
            copied("the notebook's output, returned for any batch", "layer_forward"),
        )),
    "objective": Exercise(
        "03", "F.cross_entropy(logits / temperature, labels, label_smoothing=smoothing) for each classifier's logits, "
        "added", _objective, _example_logits, (
            Mistake("the logits multiplied by the temperature", _mistaken_objective(scale_by_temperature=True),
                    "don't multiply"),
            Mistake("no label smoothing", _mistaken_objective(smoothing=False), "label_smoothing"),
            Mistake("the two terms averaged", _mistaken_objective(halve=True), "don't average"),
            Mistake("the backbone's term alone", lambda inputs: lambda b, m, y, t, e: F.cross_entropy(
                b / t, y, label_smoothing=e), "two terms"),
            copied("the notebook's loss, returned for any logits", "objective"),
        )),
    "zero_logit_softmax": Exercise(
        "03", "exponentiate the scores and divide by 1 + the row sums", _zero_logit_softmax, _example_scores, (
            Mistake("the standard softmax", lambda inputs: lambda s: torch.softmax(s, dim=-1), "standard softmax"),
            Mistake("normalising each column (dim=0)",
                    lambda inputs: lambda s: s.exp() / (1 + s.exp().sum(dim=0, keepdim=True)), "each row"),
            Mistake("summing each row without keepdim=True",
                    lambda inputs: lambda s: s.exp() / (1 + s.exp().sum(dim=-1)), "keepdim=True"),
            Mistake("returning the check's own reference (the layer's weights in the notebook)",
                    lambda inputs: constant(inputs[1]), "returns the notebook's answer"),
        ), optional=True),
}
