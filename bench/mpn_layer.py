"""MessagePassingLayer forward + backward on CPU: the library vs an edge list vs nn.TransformerEncoderLayer.

Three ways to compute the same post-norm transformer block over a batch of N embeddings:

- **library**: ``mpn_tutorial.models.MessagePassingLayer`` (dense attention, fused
  ``scaled_dot_product_attention``);
- **edge_list**: the official release's formulation: the batch as a fully connected graph with
  self-loops, stored as N² edges; every edge gathers its query and key, gets a score, a softmax
  per target node via scatter operations, and its weighted message is scatter-added to its target.
  Written here in plain torch (``index_select``, ``scatter_reduce_``, ``index_add_``) with the same
  weights as the library layer, and checked to give the same output before it is timed;
- **transformer**: ``torch.nn.TransformerEncoderLayer`` on a (1, N, dim) batch, the practical
  floor for a block of this shape in torch.

Prints ``mpn_layer/N=..,heads=..: edge_list_over_library: X`` (target >= 5) and
``library_over_transformer: Y`` (target <= 1.25), and ``edge_list_over_no_attention``: the block
without its N×N attention, an upper bound on what ``edge_list_over_library`` can reach. Run with
``nice -n 19``; ``--quick`` checks that it runs.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from benchlib import print_header, print_ratio, time_interleaved
from torch import nn

from mpn_tutorial.models import MessagePassingLayer


def fully_connected_edges(n: int) -> torch.Tensor:
    """(2, N²) edge list (source, target) of the complete graph with self-loops (the official code's graph)."""
    nodes = torch.arange(n)
    source = nodes.repeat_interleave(n)
    target = nodes.repeat(n)
    return torch.stack([source, target])


def edge_softmax(scores: torch.Tensor, target: torch.Tensor, n: int, zero_logit: bool) -> torch.Tensor:
    """Softmax of per-edge scores (H, E) over the edges that share a target node, via scatter ops.

    With ``zero_logit`` an extra logit of 0 joins every group (the official release's softmax):
    the maximum is clamped at 0 and exp(0 - max) is added to the denominator.
    """
    heads = scores.shape[0]
    index = target.expand(heads, -1)
    maximum = scores.new_full((heads, n), -math.inf).scatter_reduce_(1, index, scores, "amax")
    if zero_logit:
        maximum = maximum.clamp(min=0.0)
    # the maximum only stabilises the exponentials; no gradient needs to flow through it
    maximum = maximum.detach()
    exponentials = (scores - maximum.index_select(1, target)).exp()
    denominator = scores.new_zeros(heads, n).index_add_(1, target, exponentials)
    if zero_logit:
        denominator = denominator + (-maximum).exp()
    return exponentials / denominator.index_select(1, target)


def edge_list_layer(layer: MessagePassingLayer, x: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """The library layer's block with attention computed per edge: (N, dim) -> (N, dim).

    Uses the layer's own projections, feed-forward network and LayerNorms (dropout is assumed 0).
    """
    n, heads, head_dim = x.shape[0], layer.num_heads, layer.head_dim
    source, target = edges
    q, k, v = (p(x).view(n, heads, head_dim).transpose(0, 1) for p in (layer.q_proj, layer.k_proj, layer.v_proj))
    scores = (q.index_select(1, target) * k.index_select(1, source)).sum(-1) / math.sqrt(head_dim)  # (H, E)
    weights = edge_softmax(scores, target, n, layer.zero_logit)
    edge_messages = weights[..., None] * v.index_select(1, source)  # (H, E, head_dim)
    heads_out = x.new_zeros(heads, n, head_dim).index_add_(1, target, edge_messages)
    messages = layer.out_proj(heads_out.transpose(0, 1).reshape(n, layer.dim))
    x = layer.norm1(x + messages)
    return layer.norm2(x + layer.feed_forward.linear2(F.relu(layer.feed_forward.linear1(x))))


def no_attention_layer(layer: MessagePassingLayer, x: torch.Tensor) -> torch.Tensor:
    """The block without attention (every node receives its own value): (N, dim) -> (N, dim).

    A lower bound for *any* attention implementation: it keeps the Q/K/V/output projections, the
    feed-forward network and the LayerNorms (the part every variant shares) and drops the N×N work.
    So ``edge_list / no_attention`` bounds the edge_list-over-library ratio any library could reach.
    """
    n = x.shape[0]
    q, k, v = (p(x) for p in (layer.q_proj, layer.k_proj, layer.v_proj))
    heads_out = v + 0.0 * (q + k)  # q and k stay in the graph, so their backward GEMMs still run
    x = layer.norm1(x + layer.out_proj(heads_out.view(n, layer.dim)))
    return layer.norm2(x + layer.feed_forward.linear2(F.relu(layer.feed_forward.linear1(x))))


def check_edge_list_matches(dim: int, heads: int, n: int, ff_dim: int) -> float:
    """Largest |edge_list - library| over both softmax variants; raises if they disagree."""
    worst = 0.0
    for zero_logit in (False, True):
        torch.manual_seed(0)
        layer = MessagePassingLayer(dim, heads, ff_dim, dropout=0.0, zero_logit=zero_logit)
        x = torch.randn(n, dim)
        with torch.no_grad():
            expected = layer(x)
            _, attention = layer(x, return_attention=True)
            got = edge_list_layer(layer, x, fully_connected_edges(n))
        if zero_logit:  # the published softmax: rows sum to less than one
            assert bool((attention.sum(-1) < 1).all()), "zero_logit rows should sum to less than 1"
        difference = float((got - expected).abs().max())
        if not torch.allclose(got, expected, atol=1e-4, rtol=1e-4):
            raise AssertionError(f"edge-list layer differs from the library (zero_logit={zero_logit}): {difference}")
        worst = max(worst, difference)
    return worst


def forward_backward(module_call, x: torch.Tensor, gradient: torch.Tensor, parameters: list[nn.Parameter]):
    """One training-style pass: forward, backward with a fixed output gradient, grads cleared."""

    def step() -> None:
        for parameter in parameters:
            parameter.grad = None
        x.grad = None
        module_call(x).backward(gradient)

    return step


def bench_one(n: int, heads: int, dim: int, ff_dim: int, zero_logit: bool, warmup: int, repeats: int,
              budget_s: float) -> dict[str, float]:
    torch.manual_seed(0)
    layer = MessagePassingLayer(dim, heads, ff_dim, dropout=0.0, zero_logit=zero_logit).train()
    transformer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=ff_dim, dropout=0.0,
                                             batch_first=True).train()
    edges = fully_connected_edges(n)
    x = torch.randn(n, dim, requires_grad=True)  # the MPN's input comes from the backbone: it needs grads
    x3 = torch.randn(1, n, dim, requires_grad=True)
    gradient = torch.randn(n, dim)
    functions = {
        "library": forward_backward(layer, x, gradient, list(layer.parameters())),
        "edge_list": forward_backward(lambda t: edge_list_layer(layer, t, edges), x, gradient,
                                      list(layer.parameters())),
        "no_attention": forward_backward(lambda t: no_attention_layer(layer, t), x, gradient,
                                         list(layer.parameters())),
        "transformer": forward_backward(transformer, x3, gradient[None], list(transformer.parameters())),
    }
    return time_interleaved(functions, warmup=warmup, repeats=repeats, budget_s=budget_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs")
    parser.add_argument("--sizes", type=int, nargs="+", default=[54, 128, 256, 512], help="batch sizes N")
    parser.add_argument("--heads", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--ff-dim", type=int, default=2048)
    parser.add_argument("--zero-logit", action="store_true", help="time the published zero-logit softmax")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--budget", type=float, default=12.0, help="seconds of timing per configuration, at most")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.dim, args.ff_dim, args.warmup, args.repeats, args.budget = [16, 32], 64, 128, 1, 3, 1.0

    print_header("MessagePassingLayer forward+backward (CPU float32, dropout 0)",
                 {"dim": args.dim, "ff_dim": args.ff_dim, "zero_logit": args.zero_logit,
                  "timing": f"median of up to {args.repeats} interleaved repeats after {args.warmup} warm-up"})
    for heads in args.heads:
        difference = check_edge_list_matches(args.dim, heads, n=min(args.sizes), ff_dim=args.ff_dim)
        print(f"# check heads={heads}: edge-list output equals the library's (max |diff| {difference:.1e})")
    for n in args.sizes:
        for heads in args.heads:
            seconds = bench_one(n, heads, args.dim, args.ff_dim, args.zero_logit, args.warmup, args.repeats,
                                args.budget)
            name = f"mpn_layer/N={n},heads={heads}"
            print(f"# {name}: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in seconds.items()))
            print_ratio(name, "edge_list_over_library", seconds["edge_list"] / seconds["library"])
            print_ratio(name, "library_over_transformer", seconds["library"] / seconds["transformer"])
            # the most edge_list_over_library could be if the library's attention cost nothing
            print_ratio(name, "edge_list_over_no_attention", seconds["edge_list"] / seconds["no_attention"])


if __name__ == "__main__":
    main()
