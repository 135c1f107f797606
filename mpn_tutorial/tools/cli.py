"""Command line: ``python -m mpn_tutorial COMMAND --help``. An error is one line: exit status 2 for the user's
mistakes, 1 for the machine's or a failed download (``errors.py``); a bug shows its traceback and exits 1.
``MPN_TUTORIAL_DEBUG=1`` shows the traceback of every error."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import traceback
from pathlib import Path

from mpn_tutorial.errors import FetchError, MachineError, UsageError
from mpn_tutorial.tools import commands as run
from mpn_tutorial.tools.commands import VARIANTS, run_name, variant
from mpn_tutorial.tools.settings import choices_of, describe_range, flag_of, kind_of, value_error

__all__ = ["add_setting_flags", "build_parser", "main", "run_name"]
USAGE_ERROR, MACHINE_ERROR = 2, 1


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block), with exit status 2."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def whole_number(low: int):
    """An argparse type: an integer of at least ``low``, for the flags that are not settings."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    parse.__name__ = "whole number"
    return parse


def existing_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text} is not an existing file")
    return text


def folder(text: str) -> str:
    """A folder that exists or can be created: anything but an existing file."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return text


def _parse_setting(field: dataclasses.Field):
    """An argparse type for one value of ``field``: the text converted to the field's type, then
    checked against the field's range (``settings.value_error``)."""
    element, many, optional = kind_of(field)

    def parse(text: str):
        if optional and text.lower() == "none":
            return None
        try:
            value = element(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {describe_range(field)}, got {text!r}") from None
        if field.metadata.get("path"):  # "file" or "folder"
            (existing_file if field.metadata["path"] == "file" else folder)(text)
        if choices_of(field) is not None:
            return value  # argparse checks the choices, and lists them
        problem = value_error(field, value, element_only=True)  # a tuple's range applies to each element
        if problem:
            raise argparse.ArgumentTypeError("must be " + problem.split(" must be ", 1)[1])
        return value

    parse.__name__ = element.__name__
    return parse


def add_setting_flags(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """One flag per field of TrainConfig (or of the fields in ``only``), from the field's declaration:
    ``--FLAG`` with the field's help, range and type, ``dest`` the field's name, default None (the
    preset's value). A true/false field gets ``--FLAG`` / ``--no-FLAG``; a tuple field takes several values."""
    from mpn_tutorial.config import TrainConfig

    for field in dataclasses.fields(TrainConfig):
        if only is not None and field.name not in only:
            continue
        element, many, optional = kind_of(field)
        help_text = f"{field.metadata['help']} ({describe_range(field)}; default: the preset's)"
        options: dict = dict(dest=field.name, default=None, help=help_text.replace("%", "%%"))
        if element is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = _parse_setting(field)
            choices = choices_of(field)
            if choices is not None:
                options["choices"], options["metavar"] = choices, "{" + ",".join(map(str, choices)) + "}"
            if many:
                options["nargs"] = "*" if field.default == () else "+"
        parser.add_argument(f"--{flag_of(field)}", *(f"--{alias}" for alias in field.metadata["aliases"]), **options)


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    """What train and compare take: every setting's flag, and the progress switch."""
    add_setting_flags(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from mpn_tutorial.evaluation import REFINEMENTS
    from mpn_tutorial.tools.registry import DATASETS

    parser = _Parser(prog="python -m mpn_tutorial",
                     description="Deep metric learning with message passing over the mini-batch.")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    count = whole_number(0)

    train = subcommands.add_parser("train", help="train a preset (glyphs on CPU in minutes; benchmarks on GPUs)",
                                description="Train a model; torchrun --nproc_per_node=K -m mpn_tutorial train ... "
                                "trains on K GPUs with message passing over the global batch.")
    _add_run_flags(train)
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
    compare.add_argument("--variants", nargs="+", type=variant, metavar="VARIANT",
                         default=[variant("messages"), variant("no-messages")],
                         help=f"named flag sets: {', '.join(VARIANTS)}, or NAME='--flag value ...' with train "
                         "flags (default: messages no-messages; the first is the reference)")
    compare.add_argument("--seeds", nargs="+", type=count, default=[0, 1, 2], help="default: 0 1 2")
    compare.add_argument("--output", type=folder, help="default: runs/compare-PRESET")
    _add_run_flags(compare)
    compare.set_defaults(handler=run.compare, train_flags=_train_flags)

    evaluate = subcommands.add_parser("evaluate", help="evaluate a checkpoint on its test classes (R@K, MAP@R, NMI)",
                                   description="Retrieval metrics on the test classes and, for an MPN, what its "
                                   "attention does on fixed validation- and test-class batches.")
    evaluate.add_argument("--checkpoint", required=True, type=existing_file,
                          help="a best.pt or last.pt written by train")
    # --preset refuses a checkpoint of another preset; --data-root and --device override the checkpoint's
    add_setting_flags(evaluate, only=("preset", "data_root", "device"))
    evaluate.add_argument("--no-nmi", action="store_true")
    evaluate.add_argument("--refine-k", type=count, default=0,
                          help="test-time refinement over k-reciprocal neighbourhoods (default 0 = off)")
    evaluate.add_argument("--refine-method", choices=REFINEMENTS, default="mpn",
                          help="mpn (the trained MPN, default), or a baseline on the same neighbourhoods: "
                          "mpn_without_messages, mean (average query expansion), similarity_weighted (alpha-QE)")
    evaluate.set_defaults(handler=run.evaluate)

    make_data = subcommands.add_parser("make-data", help="generate the offline glyph dataset (cached in --data-root)")
    make_data.add_argument("name", choices=["glyphs"], help="dataset to generate")
    add_setting_flags(make_data, only=("data_root", "data_seed", "image_size"))  # default: the glyph preset's
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
    add_setting_flags(fetch, only=("data_root",))  # receives the archives and the extracted data (default: data)
    fetch.set_defaults(handler=run.fetch)
    return parser


class _VariantParser(argparse.ArgumentParser):
    """The setting flags alone, for a compare variant's NAME=FLAGS; an error is raised, not printed."""

    def error(self, message: str):
        raise UsageError(message)


def _train_flags() -> argparse.ArgumentParser:
    parser = _VariantParser(prog="a compare variant", add_help=False)
    add_setting_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from mpn_tutorial.tools.runtime import pin_threads

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what the user typed (compare records it)
    try:
        pin_threads()  # the command line is an entry point (runtime.py)
        return args.handler(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except UsageError as error:  # the user's to fix: the message says how
        return _error_line(error, USAGE_ERROR)
    except MachineError as error:  # the machine's: what happened, and what was kept
        return _error_line(error.strerror if isinstance(error, OSError) else error, MACHINE_ERROR, error)
    except MemoryError as error:  # outside a run's training (which says what it kept: commands.py)
        return _error_line("the machine ran out of memory; what this command had finished before (run folders, "
                           "written files) is kept", MACHINE_ERROR, error)
    except (FetchError, OSError) as error:  # a failed download (what to retry), permission denied, a read-only folder
        return _error_line(error, MACHINE_ERROR)
    except Exception as error:
        if type(error).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError outside a run's training
            return _error_line("the GPU ran out of memory; what this command had finished before is kept. Lower the "
                               "memory with a smaller --eval-batch-size or --classes-per-batch", MACHINE_ERROR, error)
        traceback.print_exc()  # a bug, whatever its type (a ValueError included)
        print("error: this is a bug in mpn_tutorial, not a problem with your input: please report it with the "
              "traceback above and the command you ran", file=sys.stderr)
        return MACHINE_ERROR


def _error_line(error, status: int, cause: BaseException | None = None) -> int:
    if os.environ.get("MPN_TUTORIAL_DEBUG"):
        raise cause or error
    text = str(error)
    message = " ".join(text.split()) if "\n" not in text else text
    print(f"error: {message}", file=sys.stderr)
    return status

