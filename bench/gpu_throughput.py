"""Training throughput of the CUB recipe's model on a GPU: fp32 vs bf16 autocast + channels_last, MPN on/off.

The model is mpn_tutorial's own: ``create_model(get_preset("cub", pretrained=False, loss=...))``:
ResNet-50 with global max pooling, 512-d embedding, backbone classifier, and with ``loss="mpn"``
the message-passing network (1 layer × 2 heads, FFN 2048) and its BNNeck classifier. A step is
forward + loss (``training.loss_function``) + backward + RAdam step on a batch of 112 random 227 px images
(the published batches are 54-90 images; 112 is what this benchmark was asked to use), with
labels grouped P×K like a real batch. Four variants: {fp32, bf16 autocast + channels_last}
× {loss "mpn", loss "ce"}, timed round-robin with ``torch.cuda.synchronize`` around each step,
after warm-up steps (cuDNN algorithm choice, allocator).

Prints images/s per variant, ``gpu: bf16_channels_last_over_fp32: X`` (throughput ratio, per
loss; > 1 means bf16 is faster) and ``gpu: mpn_over_ce: X`` (step-time ratio, per precision).

Without CUDA it runs at a tiny size (batch 8, 64 px, 2 timed steps) to check that the script
works; those lines are prefixed ``gpu_script_on_cpu`` and are **not GPU figures**.
"""

from __future__ import annotations

import argparse

import torch
from benchlib import print_header, print_ratio, time_interleaved

from mpn_tutorial.config import TrainConfig, create_model
from mpn_tutorial.data.splits import carve_validation_classes
from mpn_tutorial.presets import get_preset
from mpn_tutorial.training import loss_function

CUB_TRAIN_CLASSES = 100  # classes 1-100 of CUB-200-2011; the preset carves validation classes from them


def make_step(config: TrainConfig, num_classes: int, batch: int, image_size: int, bf16_channels_last: bool,
              device: torch.device):
    """A closure running one training step of ``config``'s model on a fixed random batch."""
    model = create_model(config, num_classes).to(device).train()
    memory_format = torch.channels_last if bf16_channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.RAdam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    objective = loss_function(config)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, image_size, image_size, generator=generator)
    images = images.to(device).contiguous(memory_format=memory_format)
    # P×K label structure (K = the preset's samples per class), so the MPN sees positives
    labels = (torch.arange(batch) // config.samples_per_class % num_classes).to(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_channels_last):
            loss, _ = objective(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs")
    parser.add_argument("--batch", type=int, default=112)
    parser.add_argument("--image-size", type=int, default=227)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    if args.quick or not on_gpu:
        args.batch, args.image_size, args.warmup, args.repeats = 8, 64, 1, 2
    prefix = "gpu" if on_gpu else "gpu_script_on_cpu"

    base = get_preset("cub", pretrained=False)
    num_classes = CUB_TRAIN_CLASSES - len(carve_validation_classes(CUB_TRAIN_CLASSES, base.val_fraction,
                                                                    base.data_seed))
    extra = {
        "model": f"ResNet-50 (random init), {base.embedding_dim}-d, MPN {base.mpn_layers} x {base.mpn_heads} heads, "
                 f"{num_classes} classes, RAdam",
        "batch": f"{args.batch} images of {args.image_size} px",
        "timing": f"median of {args.repeats} interleaved steps after {args.warmup} warm-up",
    }
    if on_gpu:
        extra["tf32"] = (f"matmul {torch.backends.cuda.matmul.allow_tf32}, "
                         f"cudnn {torch.backends.cudnn.allow_tf32} (torch defaults)")
    else:
        extra["WARNING"] = "no CUDA device: a tiny CPU smoke test; these are NOT GPU figures"
    print_header("training throughput of the CUB model (forward + backward + RAdam step)", extra)

    steps = {}
    for loss in ("mpn", "ce"):
        for precision in ("fp32", "bf16_channels_last"):
            config = base.replace(loss=loss)
            steps[f"{loss}/{precision}"] = make_step(config, num_classes, args.batch, args.image_size,
                                                     precision == "bf16_channels_last", device)
    seconds = time_interleaved(steps, warmup=args.warmup, repeats=args.repeats,
                               synchronize=torch.cuda.synchronize if on_gpu else None)
    for name, value in seconds.items():
        print_ratio(f"{prefix}/{name}", "images_per_second", args.batch / value)
    for loss in ("mpn", "ce"):
        print_ratio(f"{prefix}/{loss}", "bf16_channels_last_over_fp32",
                    seconds[f"{loss}/fp32"] / seconds[f"{loss}/bf16_channels_last"])
    for precision in ("fp32", "bf16_channels_last"):
        print_ratio(f"{prefix}/{precision}", "mpn_over_ce", seconds[f"mpn/{precision}"] / seconds[f"ce/{precision}"])
    if on_gpu:
        print(f"# peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
