"""Command line: ``python -m mpn_tutorial COMMAND --help``.

Commands: ``train``, ``compare`` (variants × seeds of a preset, the seed-paired table), ``evaluate``,
``make-data glyphs``, ``fetch``.

Every argument is checked where it enters: a bad value ends the command with one line that says
what was wrong and what would work, and exit status 2, never a stack trace. So do the problems of
the input found later (missing data, a wrong checkpoint, diverging training, a folder holding
another run). Problems of the machine are not usage errors: a full disk (the file, the free space,
and that the earlier checkpoints are intact), a GPU out of memory (which flags lower it), a
permission: one line, exit status 1. Anything else is a bug and shows its traceback (exit 1).
``MPN_TUTORIAL_DEBUG=1`` shows the traceback of every error.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from mpn_tutorial import commands as run
from mpn_tutorial.commands import VARIANTS, run_name, variant

__all__ = ["build_parser", "main", "run_name"]
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



# --------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that change a preset (train's, and compare's for every variant)."""
    from mpn_tutorial.config import BACKBONES, LOSSES
    from mpn_tutorial.models import ATTENTION_MODES

    count, at_least_1 = whole_number(0), whole_number(1)
    parser.add_argument("--loss", choices=LOSSES, help="default: the preset's (mpn)")
    parser.add_argument("--data-root", type=folder, help="dataset folder (see data/README.md); default: the preset's")
    parser.add_argument("--epochs", type=at_least_1)
    parser.add_argument("--batches-per-epoch", type=at_least_1)
    parser.add_argument("--lr", type=positive_number, help="learning rate")
    parser.add_argument("--seed", type=count)
    parser.add_argument("--layers", type=count, help="message-passing layers (0: the MPN head without them)")
    parser.add_argument("--heads", type=at_least_1, help="attention heads (must divide the embedding dimension)")
    parser.add_argument("--temperature", type=positive_number, help="of the cross-entropy on the logits")
    parser.add_argument("--classes-per-batch", type=whole_number(2), help="P of a P×K batch")
    parser.add_argument("--samples-per-class", type=whole_number(2), help="K of a P×K batch")
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--num-workers", type=count, help="data-loading processes")
    parser.add_argument("--weights-path", type=existing_file, help="local ImageNet weights file for the ResNet")
    parser.add_argument("--backbone", choices=BACKBONES, help="default: the preset's")
    parser.add_argument("--image-size", type=whole_number(8), help="crop size (default: the preset's; glyphs 8-64)")
    parser.add_argument("--embedding-dim", type=at_least_1)
    parser.add_argument("--no-messages", action="store_true",
                        help="the messages-off control: the same MPN head, but no sample receives anything from the "
                        "others (TrainConfig.without_messages)")
    parser.add_argument("--attention", choices=ATTENTION_MODES,
                        help="learned (published) or oracle: attention given by the labels, uniform over the "
                        "sample's class (a training-time bound)")
    parser.add_argument("--mpn-input-scale", type=positive_number,
                        help="multiply the MPN's normalised input by this (1 published; glyphs-attention: 2·sqrt(D))")
    parser.add_argument("--identity-values", action="store_true", help="start the MPN's W_v and W_o as the identity")
    parser.add_argument("--similarity-prior", action="store_true", help="start the MPN's W_q and W_k as the identity")
    parser.add_argument("--zero-out", action="store_true",
                        help="start W_o at zero: messages start at 0 and the gradient decides (no warm-up needed)")
    parser.add_argument("--no-input-map", action="store_true", help="no Linear(D, D) before the MPN's layers")
    parser.add_argument("--message-warmup-epochs", type=count,
                        help="epochs trained with messages off before they start (glyphs-attention: 5)")
    parser.add_argument("--no-pretrained", action="store_true", help="start the ResNet from random weights")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing (less GPU memory)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from mpn_tutorial.data.registry import DATASETS
    from mpn_tutorial.evaluation import REFINEMENTS
    from mpn_tutorial.presets import PRESETS

    parser = _Parser(prog="python -m mpn_tutorial",
                     description="Deep metric learning with message passing over the mini-batch.")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    count = whole_number(0)

    train = subcommands.add_parser("train", help="train a preset (glyphs on CPU in minutes; benchmarks on GPUs)",
                                description="Train a model; torchrun --nproc_per_node=K -m mpn_tutorial train ... "
                                "trains on K GPUs with message passing over the global batch.")
    train.add_argument("--preset", default="glyphs", choices=list(PRESETS))
    _add_train_flags(train)
    train.add_argument("--checkpoint-dir", type=folder,
                       help="default: runs/PRESET-LOSS[-CHANGED-FLAGS]-seedSEED, so different runs never share one")
    train.add_argument("--resume", action="store_true", help="continue the run in CHECKPOINT_DIR (same settings)")
    train.add_argument("--overwrite", action="store_true", help="replace another run held in CHECKPOINT_DIR")
    train.add_argument("--no-nmi", action="store_true", help="skip NMI (k-means) in the final evaluation")
    train.set_defaults(handler=run.train_command)

    compare = subcommands.add_parser(
        "compare", help="train variants × seeds of a preset and write the seed-paired table (markdown + JSON)",
        description="Train every (variant, seed) into its own run folder (resumable; a folder holding other "
        "settings is refused), then write OUTPUT/comparison.md and .json: per variant mean ± std over seeds of "
        "test R@1, MAP@R and the attention's same-class share, and the seed-paired difference to the first variant "
        "with its t. Flags after the variants apply to every variant. Example: compare --preset cub --data-root "
        "data --variants messages no-messages --seeds 0 1 2")
    compare.add_argument("--preset", default="glyphs", choices=list(PRESETS))
    compare.add_argument("--variants", nargs="+", type=variant, metavar="VARIANT",
                         default=[variant("messages"), variant("no-messages")],
                         help=f"named flag sets: {', '.join(VARIANTS)}, or NAME='--flag value ...' with train "
                         "flags (default: messages no-messages; the first is the reference)")
    compare.add_argument("--seeds", nargs="+", type=count, default=[0, 1, 2], help="default: 0 1 2")
    compare.add_argument("--output", type=folder, help="default: runs/compare-PRESET")
    _add_train_flags(compare)
    compare.set_defaults(handler=run.compare, train_flags=_train_flags)

    evaluate = subcommands.add_parser("evaluate", help="evaluate a checkpoint on its test classes (R@K, MAP@R, NMI)",
                                   description="Retrieval metrics on the test classes and, for an MPN, what its "
                                   "attention does on fixed validation- and test-class batches.")
    evaluate.add_argument("--checkpoint", required=True, type=existing_file,
                          help="a best.pt or last.pt written by train")
    evaluate.add_argument("--preset", choices=list(PRESETS), help="refuse the checkpoint unless it has this preset")
    evaluate.add_argument("--data-root", type=folder, help="override the dataset folder stored in the checkpoint")
    evaluate.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    evaluate.add_argument("--no-nmi", action="store_true")
    evaluate.add_argument("--refine-k", type=count, default=0,
                          help="test-time refinement over k-reciprocal neighbourhoods (default 0 = off)")
    evaluate.add_argument("--refine-method", choices=REFINEMENTS, default="mpn",
                          help="mpn (the trained MPN, default), or a baseline on the same neighbourhoods: "
                          "mpn_without_messages, mean (average query expansion), similarity_weighted (alpha-QE)")
    evaluate.set_defaults(handler=run.evaluate)

    make_data = subcommands.add_parser("make-data", help="generate the offline glyph dataset (cached under --root)")
    make_data.add_argument("name", choices=["glyphs"], help="dataset to generate")
    make_data.add_argument("--root", type=folder, default="data", help="data folder (default: data)")
    make_data.add_argument("--seed", type=count, default=0)
    make_data.add_argument("--image-size", type=whole_number(8, 64), default=32, help="pixels (8-64, default 32)")
    make_data.add_argument("--images-per-class", type=whole_number(2), default=48, help="at least 2 (default 48)")
    make_data.set_defaults(handler=run.make_data)

    key = subcommands.add_parser("answer-key", help="for teachers: the notebooks executed with the reference solutions",
                                 description="Execute a copy of every numbered notebook with its exercise's reference "
                                 "solution filled in (mpn_tutorial/solutions.py), into OUTPUT; the notebooks "
                                 "themselves are not changed. Exit status 1 if a check does not say correct.")
    key.add_argument("--notebooks", type=folder, default="notebooks", help="default: notebooks")
    key.add_argument("--output", type=folder, default="answer_key", help="default: answer_key")
    key.set_defaults(handler=run.answer_key)

    fetch = subcommands.add_parser("fetch", help="download CUB-200-2011 / Cars196 / SOP / In-Shop, or say how")
    fetch.add_argument("name", choices=list(DATASETS), help="benchmark to fetch: " + ", ".join(DATASETS))
    fetch.add_argument("--root", type=folder, default="data",
                       help="folder that receives the archives and extracted data (default: data)")
    fetch.set_defaults(handler=run.fetch)
    return parser


class _VariantParser(argparse.ArgumentParser):
    """The train flags alone, for a compare variant's NAME=FLAGS; an error is raised, not printed."""

    def error(self, message: str):
        raise ValueError(message)


def _train_flags() -> argparse.ArgumentParser:
    parser = _VariantParser(prog="a compare variant", add_help=False)
    _add_train_flags(parser)
    return parser

# Errors that mean "the input was wrong" (exit 2): bad settings, missing or foreign files, a folder
# holding another run, a diverging run (its learning rate). Errors of the machine (a full disk, a GPU
# out of memory, a permission) exit 1 with one line; anything else is a bug: its traceback, exit 1.
MACHINE_ERROR = 1


def main(argv: list[str] | None = None) -> int:
    from mpn_tutorial.atomic import DiskFullError
    from mpn_tutorial.runtime import pin_threads

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what the user typed (compare records it)
    try:
        pin_threads()  # the command line is an entry point (runtime.py)
        return args.handler(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FloatingPointError) as error:
        return _error_line(error, USAGE_ERROR)
    except DiskFullError as error:
        resume = " The last finished epoch's last.pt and best.pt are intact: --resume continues from them." \
            if args.command in ("train", "compare") else ""
        return _error_line(f"{error.strerror}.{resume}", MACHINE_ERROR, error)
    except OSError as error:  # permission denied, a read-only folder, ...
        return _error_line(error, MACHINE_ERROR)
    except Exception as error:
        if type(error).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError (and the accelerators')
            return _error_line("the GPU ran out of memory. Lower it with a smaller batch (--classes-per-batch), "
                               "activation checkpointing (--checkpointing) or a smaller --image-size.",
                               MACHINE_ERROR, error)
        raise  # a bug: Python prints the traceback and exits with status 1


def _error_line(error, status: int, cause: BaseException | None = None) -> int:
    if os.environ.get("MPN_TUTORIAL_DEBUG"):
        raise cause or error
    text = str(error)
    message = " ".join(text.split()) if "\n" not in text else text
    print(f"error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())

