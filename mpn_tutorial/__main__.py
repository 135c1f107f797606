"""Command line: ``python -m mpn_tutorial COMMAND --help``.

Commands: ``train`` (a preset, optionally changed by flags), ``evaluate`` (a checkpoint on its
test classes), ``make-data glyphs`` (the offline dataset), ``fetch`` (the four benchmarks).

Every argument is checked where it enters: a bad value ends the command with one line that says
what was wrong and what would work, and exit status 2, never a stack trace. So do expected
problems later on (missing data, a wrong checkpoint, diverging training, a folder holding another
run). ``MPN_TUTORIAL_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block), with exit status 2."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def whole_number(low: int, high: int | None = None):
    """An argparse type: an integer from ``low`` (to ``high``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            allowed = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value}")
        return value
    parse.__name__ = "whole number"
    return parse


def positive_number(text: str) -> float:
    """An argparse type: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def existing_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text} is not an existing file")
    return text


def folder(text: str) -> str:
    """A folder that exists or can be created: anything but an existing file."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return text


def _format_metrics(values: dict[str, float]) -> str:
    names = {"map@r": "MAP@R", "r_precision": "RP", "nmi": "NMI"}
    shown = []
    for name, value in values.items():
        if name.startswith("recall@"):
            shown.append(f"R@{name[len('recall@'):]} {100 * value:.2f}")
        elif name in names:
            shown.append(f"{names[name]} {100 * value:.2f}")
    return "  ".join(shown)


# --------------------------------------------------------------------------------------------
# make-data
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------

# flag -> TrainConfig field, for the flags that change one field
_TRAIN_OVERRIDES = {
    "loss": "loss",
    "data_root": "data_root",
    "epochs": "epochs",
    "batches_per_epoch": "batches_per_epoch",
    "lr": "lr",
    "seed": "seed",
    "layers": "mpn_layers",
    "heads": "mpn_heads",
    "temperature": "temperature",
    "classes_per_batch": "classes_per_batch",
    "samples_per_class": "samples_per_class",
    "device": "device",
    "num_workers": "num_workers",
    "weights_path": "weights_path",
    "image_size": "image_size",
    "backbone": "backbone",
    "embedding_dim": "embedding_dim",
    "mpn_input_scale": "mpn_input_scale",
    "message_warmup_epochs": "message_warmup_epochs",
}
# flags the default folder name leaves out: loss and seed have their own place in it; the others say
# where or how fast a run computes, or name a file (a path would nest folders)
_NOT_IN_RUN_NAME = ("loss", "seed", "data_root", "device", "num_workers", "weights_path")


def run_name(config, changed_flags: dict) -> str:
    """The default run folder's name: preset, loss, every flag that changed the preset, seed.

    ``runs/glyphs-mpn-seed0``; ``runs/glyphs-mpn-lr0.1-seed0`` after ``--lr 0.1``.
    """
    from mpn_tutorial.presets import get_preset

    preset = get_preset(config.preset)
    parts = [config.preset, config.loss]
    for flag, value in sorted(changed_flags.items()):
        field = _TRAIN_OVERRIDES.get(flag, flag)
        if flag in _NOT_IN_RUN_NAME or getattr(preset, field, None) == value:
            continue
        if isinstance(value, bool):
            text = "" if value else "off"
        else:
            text = f"{value:g}" if isinstance(value, float) else str(value)
        parts.append(f"{flag.replace('_', '-')}{text}")
    return "-".join(parts + [f"seed{config.seed}"])


def _train(args: argparse.Namespace) -> int:
    from mpn_tutorial.callbacks import CSVLogger, TensorBoardLogger
    from mpn_tutorial.presets import get_preset
    from mpn_tutorial.training import train

    changes = {field: getattr(args, flag) for flag, field in _TRAIN_OVERRIDES.items()
               if getattr(args, flag) is not None}
    flags = {flag: getattr(args, flag) for flag in _TRAIN_OVERRIDES if getattr(args, flag) is not None}
    if args.no_pretrained:
        changes["pretrained"] = flags["pretrained"] = False
    if args.identity_values:
        changes["mpn_identity_values"] = flags["identity_values"] = True
    if args.checkpointing:
        changes["checkpointing"] = True
    config = get_preset(args.preset, **changes)
    config.validate()

    from mpn_tutorial import distributed as dist_module

    distributed = dist_module.from_environment(config)
    is_main = distributed is None or distributed.is_main
    name = run_name(config, flags)
    checkpoint_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else Path("runs") / name
    callbacks = [CSVLogger(checkpoint_dir / "metrics.csv")] if is_main else []
    if is_main:
        try:
            callbacks.append(TensorBoardLogger(checkpoint_dir / "tensorboard"))
        except ImportError:
            pass  # TensorBoard is optional; metrics.csv has the same numbers
        what = "continuing" if args.resume and (checkpoint_dir / "last.pt").exists() else "training"
        print(f"{what} {name}: {config.epochs} epochs, checkpoints in {checkpoint_dir}")
    try:
        result = train(config, callbacks=callbacks, checkpoint_dir=checkpoint_dir, resume=args.resume,
                       progress=not args.no_progress, compute_nmi=not args.no_nmi, distributed=distributed,
                       overwrite=args.overwrite)
    finally:
        if distributed is not None:
            distributed.close()
    if is_main:
        for row in result.history:
            validation = {name[len("val_") :]: value for name, value in row.items() if name.startswith("val_")}
            print(f"epoch {row['epoch']:3d}  val {_format_metrics(validation)}")
        print(f"best epoch {result.best_epoch} (by validation R@1); {result.seconds:.1f} s")
        print(f"test  {_format_metrics(result.test_metrics)}")
        print(f"saved in {checkpoint_dir}: best.pt, last.pt, metrics.csv")
    return 0


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def _evaluate(args: argparse.Namespace) -> int:
    from mpn_tutorial.checkpoints import CheckpointError, load_model
    from mpn_tutorial.data.build import build_datasets
    from mpn_tutorial.evaluation import evaluate_on_test
    from mpn_tutorial.runtime import resolve_device

    model, config = load_model(args.checkpoint)
    if args.preset is not None and args.preset != config.preset:
        raise CheckpointError(
            f"checkpoint {args.checkpoint} was trained with preset {config.preset!r}, not {args.preset!r}"
        )
    if args.refine_k and model.mpn is None:
        raise ValueError(f"--refine-k needs a model trained with message passing; {args.checkpoint} has loss "
                         f"{config.loss!r}")
    if args.data_root is not None:
        config = config.replace(data_root=args.data_root)
    if args.device is not None:
        config = config.replace(device=args.device)
    model.to(resolve_device(config.device))
    metrics = evaluate_on_test(model, build_datasets(config), config.dataset, compute_nmi=not args.no_nmi,
                               refine_k=args.refine_k, batch_size=config.eval_batch_size, seed=config.seed)
    print(f"{config.preset} test classes ({metrics['queries']} queries): {_format_metrics(metrics)}")
    return 0


# --------------------------------------------------------------------------------------------
# fetch
# --------------------------------------------------------------------------------------------


class _ProgressPrinter:
    """Prints a line to stderr every 5 % (or every 256 MiB when the size is unknown)."""

    def __init__(self) -> None:
        self.last_step = -1

    def __call__(self, received: int, total: int | None) -> None:
        step = received * 20 // total if total else received // (256 << 20)
        if step != self.last_step:
            self.last_step = step
            of_total = f" of {total / 2**20:,.1f} MiB ({100 * received / total:.0f} %)" if total else " MiB"
            print(f"  {received / 2**20:,.1f}{of_total}", file=sys.stderr, flush=True)


def _fetch(args: argparse.Namespace) -> int:
    """0 when the data is ready, 2 when a manual download is needed, 1 when fetching failed."""
    from mpn_tutorial.data.fetch import FetchError, ManualDownloadRequired, fetch_dataset
    from mpn_tutorial.data.registry import dataset_source

    try:
        source = dataset_source(args.name)
        ready = fetch_dataset(args.name, args.root, progress=_ProgressPrinter())
    except ManualDownloadRequired as exc:
        print(exc)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except (FetchError, OSError) as exc:  # OSError: disk full, permission denied, ...
        print(f"error: {exc}", file=sys.stderr)
        return 1
    splits = " | ".join(f'"{split}"' for split in source.splits)
    print(f'{source.title} is ready in {ready}\n  {source.reader}(root="{ready}", split={splits})')
    return 0


# --------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from mpn_tutorial.config import BACKBONES, LOSSES
    from mpn_tutorial.data.registry import DATASETS
    from mpn_tutorial.presets import PRESETS

    parser = _Parser(prog="python -m mpn_tutorial",
                     description="Deep metric learning with message passing over the mini-batch.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    count, at_least_1 = whole_number(0), whole_number(1)

    train = commands.add_parser("train", help="train a preset (glyphs on CPU in minutes; cub/cars/sop/inshop on GPUs)",
                                description="Train a model; torchrun --nproc_per_node=K -m mpn_tutorial train ... "
                                "trains on K GPUs with message passing over the global batch.")
    train.add_argument("--preset", default="glyphs", choices=list(PRESETS))
    train.add_argument("--loss", choices=LOSSES, help="default: the preset's (mpn)")
    train.add_argument("--data-root", type=folder, help="dataset folder (see data/README.md); default: the preset's")
    train.add_argument("--epochs", type=at_least_1)
    train.add_argument("--batches-per-epoch", type=at_least_1)
    train.add_argument("--lr", type=positive_number, help="learning rate")
    train.add_argument("--seed", type=count)
    train.add_argument("--layers", type=at_least_1, help="message-passing layers")
    train.add_argument("--heads", type=at_least_1, help="attention heads (must divide the embedding dimension)")
    train.add_argument("--temperature", type=positive_number, help="of the cross-entropy on the logits")
    train.add_argument("--classes-per-batch", type=whole_number(2), help="P of a P×K batch")
    train.add_argument("--samples-per-class", type=whole_number(2), help="K of a P×K batch")
    train.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    train.add_argument("--num-workers", type=count, help="data-loading processes")
    train.add_argument("--weights-path", type=existing_file, help="local ImageNet weights file for the ResNet")
    train.add_argument("--backbone", choices=BACKBONES, help="default: the preset's")
    train.add_argument("--image-size", type=whole_number(8), help="crop size (default: the preset's; glyphs 8-64)")
    train.add_argument("--embedding-dim", type=at_least_1)
    train.add_argument("--mpn-input-scale", type=positive_number,
                       help="multiply the MPN's normalised input by this (1 published; glyphs-attention: 2·sqrt(D))")
    train.add_argument("--identity-values", action="store_true", help="start the MPN's W_v and W_o as the identity")
    train.add_argument("--message-warmup-epochs", type=count,
                       help="epochs trained with messages off before they start (glyphs-attention: 5)")
    train.add_argument("--no-pretrained", action="store_true", help="start the ResNet from random weights")
    train.add_argument("--checkpointing", action="store_true", help="activation checkpointing (less GPU memory)")
    train.add_argument("--checkpoint-dir", type=folder,
                       help="default: runs/PRESET-LOSS[-CHANGED-FLAGS]-seedSEED, so different runs never share one")
    train.add_argument("--resume", action="store_true", help="continue the run in CHECKPOINT_DIR (same settings)")
    train.add_argument("--overwrite", action="store_true", help="replace another run held in CHECKPOINT_DIR")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--no-nmi", action="store_true", help="skip NMI (k-means) in the final evaluation")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="evaluate a checkpoint on its test classes (Recall@K, MAP@R, NMI)")
    evaluate.add_argument("--checkpoint", required=True, type=existing_file,
                          help="a best.pt or last.pt written by train")
    evaluate.add_argument("--preset", choices=list(PRESETS), help="refuse the checkpoint unless it has this preset")
    evaluate.add_argument("--data-root", type=folder, help="override the dataset folder stored in the checkpoint")
    evaluate.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    evaluate.add_argument("--no-nmi", action="store_true")
    evaluate.add_argument("--refine-k", type=count, default=0,
                          help="test-time refinement over k-reciprocal neighbourhoods (MPN models; default 0 = off)")
    evaluate.set_defaults(handler=_evaluate)

    make_data = commands.add_parser("make-data", help="generate the offline glyph dataset (cached under --root)")
    make_data.add_argument("name", choices=["glyphs"], help="dataset to generate")
    make_data.add_argument("--root", type=folder, default="data", help="data folder (default: data)")
    make_data.add_argument("--seed", type=count, default=0)
    make_data.add_argument("--image-size", type=whole_number(8, 64), default=32, help="pixels (8-64, default 32)")
    make_data.add_argument("--images-per-class", type=whole_number(2), default=48, help="at least 2 (default 48)")
    make_data.set_defaults(handler=_make_data)

    fetch = commands.add_parser("fetch", help="download CUB-200-2011 / Cars196 / SOP / In-Shop, or say how")
    fetch.add_argument("name", choices=list(DATASETS), help="benchmark to fetch: " + ", ".join(DATASETS))
    fetch.add_argument("--root", type=folder, default="data",
                       help="folder that receives the archives and extracted data (default: data)")
    fetch.set_defaults(handler=_fetch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, FloatingPointError, RuntimeError, OSError) as error:
        if os.environ.get("MPN_TUTORIAL_DEBUG"):
            raise
        message = " ".join(str(error).split()) if "\n" not in str(error) else str(error)
        print(f"error: {message}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
