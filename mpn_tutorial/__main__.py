"""Command line: ``python -m mpn_tutorial COMMAND --help``.

Commands: ``train`` (a preset, optionally changed by flags), ``evaluate`` (a checkpoint on its
test classes), ``make-data glyphs`` (the offline dataset), ``fetch`` (the four benchmarks).
Expected problems (missing data, a wrong checkpoint, diverging training) end with a one-line
message and exit status 2, not a stack trace.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _format_metrics(values: dict[str, float]) -> str:
    shown = []
    for name, value in values.items():
        if name.startswith("recall@"):
            shown.append(f"R@{name[len('recall@'):]} {100 * value:.2f}")
        elif name == "map@r":
            shown.append(f"MAP@R {100 * value:.2f}")
        elif name == "r_precision":
            shown.append(f"RP {100 * value:.2f}")
        elif name == "nmi":
            shown.append(f"NMI {100 * value:.2f}")
    return "  ".join(shown)


def _make_data(args: argparse.Namespace) -> int:
    from mpn_tutorial.data.glyphs import cache_path, load_glyphs

    path = cache_path(args.root, args.seed, args.image_size, args.images_per_class)
    existed = path.exists()
    start = time.perf_counter()
    arrays = load_glyphs(args.root, args.seed, args.image_size, args.images_per_class)
    seconds = time.perf_counter() - start
    split = arrays["class_split"]
    verb = "found" if existed else f"generated in {seconds:.1f} s:"
    counts = ", ".join(f"{name} {int((split == i).sum())}" for i, name in enumerate(("train", "val", "test")))
    print(f"glyphs {verb} {path} — {len(arrays['images'])} images of {len(split)} classes ({counts} classes)")
    return 0


_TRAIN_OVERRIDES = {
    # flag: (TrainConfig field, type)
    "loss": ("loss", str),
    "data_root": ("data_root", str),
    "epochs": ("epochs", int),
    "batches_per_epoch": ("batches_per_epoch", int),
    "lr": ("lr", float),
    "seed": ("seed", int),
    "layers": ("mpn_layers", int),
    "heads": ("mpn_heads", int),
    "temperature": ("temperature", float),
    "device": ("device", str),
    "num_workers": ("num_workers", int),
    "weights_path": ("weights_path", str),
    "image_size": ("image_size", int),
    "backbone": ("backbone", str),
    "embedding_dim": ("embedding_dim", int),
}


def _train(args: argparse.Namespace) -> int:
    from mpn_tutorial.presets import get_preset
    from mpn_tutorial.training import CSVLogger, TensorBoardLogger, train

    changes = {field: getattr(args, flag) for flag, (field, _) in _TRAIN_OVERRIDES.items()
               if getattr(args, flag) is not None}
    if args.no_pretrained:
        changes["pretrained"] = False
    if args.checkpointing:
        changes["checkpointing"] = True
    config = get_preset(args.preset, **changes)

    from mpn_tutorial import distributed as dist_module

    distributed = dist_module.from_environment(config)
    is_main = distributed is None or distributed.is_main
    run_name = f"{config.preset}-{config.loss}-seed{config.seed}"
    checkpoint_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else Path("runs") / run_name
    callbacks = [CSVLogger(checkpoint_dir / "metrics.csv")] if is_main else []
    if is_main:
        try:
            callbacks.append(TensorBoardLogger(checkpoint_dir / "tensorboard"))
        except ImportError:
            pass  # TensorBoard is optional; metrics.csv has the same numbers
        print(f"training {run_name}: {config.epochs} epochs, checkpoints in {checkpoint_dir}")
    try:
        result = train(config, callbacks=callbacks, checkpoint_dir=checkpoint_dir, resume=args.resume,
                       progress=not args.no_progress, compute_nmi=not args.no_nmi, distributed=distributed)
    finally:
        if distributed is not None:
            distributed.close()
    if is_main:
        for row in result.history:
            validation = {name[len("val_") :]: value for name, value in row.items() if name.startswith("val_")}
            print(f"epoch {row['epoch']:3d}  val {_format_metrics(validation)}")
        print(f"best epoch {result.best_epoch} (by validation R@1); {result.seconds:.1f} s")
        print(f"test  {_format_metrics(result.test_metrics)}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from mpn_tutorial.training import build_datasets, evaluate_on_test, load_model

    model, config = load_model(args.checkpoint)
    if args.preset is not None and args.preset != config.preset:
        raise ValueError(
            f"checkpoint {args.checkpoint} was trained with preset {config.preset!r}, not {args.preset!r}"
        )
    if args.data_root is not None:
        config = config.replace(data_root=args.data_root)
    if args.device is not None:
        config = config.replace(device=args.device)
    from mpn_tutorial.training import resolve_device

    model.to(resolve_device(config.device))
    metrics = evaluate_on_test(model, build_datasets(config), config, compute_nmi=not args.no_nmi,
                               refine_k=args.refine_k)
    print(f"{config.preset} test classes ({metrics['queries']} queries): {_format_metrics(metrics)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mpn_tutorial.presets import PRESETS
    from mpn_tutorial.training import LOSSES

    parser = argparse.ArgumentParser(
        prog="python -m mpn_tutorial",
        description="Deep metric learning with message passing over the mini-batch.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser("train", help="train a preset (glyphs on CPU in minutes; cub/cars/sop/inshop on GPUs)",
                                description="Train a model; torchrun --nproc_per_node=K -m mpn_tutorial train ... "
                                "trains on K GPUs with message passing over the global batch.")
    train.add_argument("--preset", default="glyphs", choices=sorted(PRESETS))
    train.add_argument("--loss", choices=LOSSES, help="default: the preset's (mpn)")
    train.add_argument("--data-root", help="dataset folder (see data/README.md); default: the preset's")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batches-per-epoch", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--seed", type=int)
    train.add_argument("--layers", type=int, help="message-passing layers")
    train.add_argument("--heads", type=int, help="attention heads")
    train.add_argument("--temperature", type=float)
    train.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    train.add_argument("--num-workers", type=int, help="data-loading processes")
    train.add_argument("--weights-path", help="local ImageNet weights file for the ResNet backbone")
    train.add_argument("--backbone", choices=["glyph_cnn", "resnet18", "resnet50"], help="default: the preset's")
    train.add_argument("--image-size", type=int, help="crop size (default: the preset's, 227 for benchmarks)")
    train.add_argument("--embedding-dim", type=int)
    train.add_argument("--no-pretrained", action="store_true", help="start the ResNet from random weights")
    train.add_argument("--checkpointing", action="store_true", help="activation checkpointing (less GPU memory)")
    train.add_argument("--checkpoint-dir", help="default: runs/PRESET-LOSS-seedSEED")
    train.add_argument("--resume", action="store_true", help="continue from CHECKPOINT_DIR/last.pt")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--no-nmi", action="store_true", help="skip NMI (k-means) in the final evaluation")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="evaluate a checkpoint on its test classes (Recall@K, MAP@R, NMI)")
    evaluate.add_argument("--checkpoint", required=True, help="a best.pt or last.pt written by train")
    evaluate.add_argument("--preset", help="refuse the checkpoint unless it was trained with this preset")
    evaluate.add_argument("--data-root", help="override the dataset folder stored in the checkpoint")
    evaluate.add_argument("--device")
    evaluate.add_argument("--no-nmi", action="store_true")
    evaluate.add_argument("--refine-k", type=int, default=0,
                          help="test-time refinement over k-reciprocal neighbourhoods (MPN models; default off)")
    evaluate.set_defaults(handler=_evaluate)

    make_data = commands.add_parser("make-data", help="generate the offline glyph dataset (cached under --root)")
    make_data.add_argument("name", choices=["glyphs"], help="dataset to generate")
    make_data.add_argument("--root", default="data", help="data folder (default: data)")
    make_data.add_argument("--seed", type=int, default=0)
    make_data.add_argument("--image-size", type=int, default=32)
    make_data.add_argument("--images-per-class", type=int, default=48)
    make_data.set_defaults(handler=_make_data)

    from mpn_tutorial.data import fetch

    fetch_parser = commands.add_parser("fetch", help="download CUB-200-2011 / Cars196 / SOP / In-Shop, or say how")
    fetch.add_fetch_arguments(fetch_parser)
    fetch_parser.set_defaults(handler=fetch.run_fetch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, FloatingPointError, RuntimeError) as error:
        if os.environ.get("MPN_TUTORIAL_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
