import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mpn_tutorial.data import PKSampler
from mpn_tutorial.presets import get_preset
from mpn_tutorial.tools.distributed import ShardedBatchSampler
from mpn_tutorial.training import create_model, loss_function

CONFIG = get_preset("glyphs", glyph_channels=(8, 16), embedding_dim=16, mpn_ff_dim=32, mpn_heads=2, device="cpu")
NUM_CLASSES = 6


def global_batch():
    """A P×K batch of 6 classes × 4 samples of random images (the same in every process)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(24, 1, 32, 32, generator=generator)
    return images, torch.arange(NUM_CLASSES).repeat_interleave(4)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_distributed_step_equals_one_process_over_the_concatenated_batch(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
               str(Path(__file__).with_name("distributed_step_worker.py")), str(tmp_path)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MPN_TUTORIAL_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert completed.returncode == 0, completed.stderr[-3000:]

    model = create_model(CONFIG, NUM_CLASSES).train()
    images, labels = global_batch()
    torch.manual_seed(1)
    loss, _ = loss_function(CONFIG)(model(images), labels)
    loss.backward()
    # Float tolerance relative to the model's largest gradient entry: sums run in another order, and
    # some gradients are zero in exact arithmetic (the key bias; the last LayerNorm, which the BNNeck
    # renormalises), so they are pure float noise in both runs.
    largest = max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None)
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(result["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
        for name, parameter in model.named_parameters():
            if parameter.grad is not None:
                torch.testing.assert_close(result["gradients"][name], parameter.grad, rtol=1e-4,
                                           atol=1e-6 * largest, msg=lambda m, name=name: f"{name}: {m}")


def test_rank_slices_reassemble_the_global_batch():
    labels = torch.arange(10).repeat_interleave(6)
    sampler = PKSampler(labels, 4, 3, seed=3, num_batches=5)
    shards = [ShardedBatchSampler(PKSampler(labels, 4, 3, seed=3, num_batches=5), rank, 2) for rank in (0, 1)]
    for whole, first, second in zip(sampler, *shards):
        assert first + second == whole


def test_a_global_batch_that_cannot_be_split_evenly_is_refused():
    with pytest.raises(ValueError, match="cannot be split evenly"):
        ShardedBatchSampler(PKSampler(torch.arange(10).repeat_interleave(3), 5, 3), rank=0, world_size=2)
