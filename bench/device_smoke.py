"""GPU smoke run of the experiment command: ``compare`` on a synthetic tree in the CUB-200-2011 layout.

For a machine with a GPU (the device tool lends one to some tasks): it writes a synthetic CUB tree
(random-texture JPEGs, one colour tone per class, 100 training + 100 test classes), then runs
``python -m mpn_tutorial compare --preset cub`` with ResNet-50 from random weights (no download),
bf16 autocast and channels-last as the preset has them, for a few dozen steps per variant
(``messages`` against ``no-messages``, seeds 0 and 1), and prints images per second of the training
steps and the GPU's peak memory. It must finish within 4 minutes on one GPU; it prints its total time.

    python bench/device_smoke.py                      # GPU: ResNet-50, 227 px, 30 steps per run
    python bench/device_smoke.py --cpu-check          # CPU: ResNet-18, 64 px, 2 steps (checks the script only)

The numbers are a smoke test (synthetic images, random weights), not a benchmark result.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import print_header, print_ratio
from PIL import Image

from mpn_tutorial.tools.cli import main as command_line

STEPS = 30


def write_synthetic_cub(root: Path, classes=range(1, 201), per_class: int = 8, size: int = 256, seed: int = 0) -> Path:
    """A tree in the CUB-200-2011 layout (``images.txt``, ``image_class_labels.txt``, ``images/``) with
    the given class ids (1-100 train, 101-200 test)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for class_id in classes:
        tone = rng.uniform(40, 215, size=3)
        for k in range(per_class):
            relative = f"{class_id:03d}.Synthetic_{class_id}/image_{k}.jpg"
            pixels = np.clip(tone + rng.normal(0, 40, size=(size, size + 32, 3)), 0, 255).astype(np.uint8)
            path = root / "images" / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path, quality=85)
            images.append(f"{len(images) + 1} {relative}")
            labels.append(f"{len(labels) + 1} {class_id}")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-check", action="store_true", help="tiny CPU run: checks the script, not a GPU figure")
    args = parser.parse_args(argv)
    import torch

    start = time.perf_counter()
    gpu = torch.cuda.is_available() and not args.cpu_check
    print_header("device smoke: compare on a synthetic CUB tree", {"mode": "GPU" if gpu else "CPU check"})
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        classes, per_class = (range(1, 201), 8) if gpu else ([*range(1, 13), *range(101, 105)], 3)
        root = write_synthetic_cub(folder / "CUB_200_2011", classes, per_class, size=256 if gpu else 80)
        if gpu:
            flags = ["--backbone", "resnet50", "--image-size", "227", "--device", "cuda", "--num-workers", "8"]
        else:
            flags = ["--backbone", "resnet18", "--image-size", "64", "--device", "cpu", "--num-workers", "0"]
        steps = STEPS if gpu else 2
        arguments = ["compare", "--preset", "cub", "--data-root", str(root), "--no-pretrained", *flags, "--epochs",
                     "1", "--batches-per-epoch", str(steps), "--no-progress", "--variants", "messages", "no-messages",
                     "--seeds", "0", "1", "--output", str(folder / "runs")]
        print("$ python -m mpn_tutorial", " ".join(arguments), flush=True)
        status = command_line(arguments)  # in this process, so that the peak memory below is the training's
        if status != 0:
            return status
        table = json.loads((folder / "runs" / "comparison.json").read_text())
        batch = 6 * 9  # the cub preset's P×K
        for name, runs in table["results"].items():
            seconds = [_train_seconds(Path(run["folder"])) for run in runs]
            print_ratio("device_smoke", f"{name}_images_per_second", batch * steps / float(np.median(seconds)))
    if gpu:
        print_ratio("device_smoke", "peak_gpu_memory_gib", torch.cuda.max_memory_allocated() / 2**30)
    print_ratio("device_smoke", "total_seconds", time.perf_counter() - start)
    return 0


def _train_seconds(folder: Path) -> float:
    """The seconds of the run's (one) epoch's training steps, from its metrics.csv."""
    with (folder / "metrics.csv").open() as file:
        return float(next(csv.DictReader(file))["train_seconds"])


if __name__ == "__main__":
    sys.exit(main())
