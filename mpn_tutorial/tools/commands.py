"""What each command of the command line does (the parser, the flags and the exit statuses: ``cli.py``)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from pathlib import Path

from mpn_tutorial.errors import UsageError


def _format_metrics(values: dict[str, float]) -> str:
    names = {"map@r": "MAP@R", "r_precision": "RP", "nmi": "NMI"}
    labels = {name: f"R@{name[len('recall@'):]}" if name.startswith("recall@") else names.get(name) for name in values}
    return "  ".join(f"{label} {100 * values[name]:.2f}" for name, label in labels.items() if label)


# -- make-data -------------------------------------------------------------------------------
def make_data(args: argparse.Namespace) -> int:
    from mpn_tutorial.data.glyphs import cache_path, load_glyphs
    from mpn_tutorial.data.splits import split_classes
    from mpn_tutorial.presets import GLYPHS

    root, seed, image_size = (getattr(GLYPHS, name) if getattr(args, name) is None else getattr(args, name)
                              for name in ("data_root", "data_seed", "image_size"))  # a flag not given: the preset's
    path = cache_path(root, seed, image_size, args.images_per_class)
    existed = path.exists()
    start = time.perf_counter()
    arrays = load_glyphs(root, seed, image_size, args.images_per_class)
    seconds = time.perf_counter() - start
    split = split_classes(len(arrays["codepoints"]), seed)
    verb = "found" if existed else f"generated in {seconds:.1f} s:"
    counts = ", ".join(f"{name} {int((split == i).sum())}" for i, name in enumerate(("train", "val", "test")))
    print(f"glyphs {verb} {path} — {len(arrays['images'])} images of {len(split)} classes ({counts} classes)")
    return 0


# -- train -----------------------------------------------------------------------------------
def _config(args: argparse.Namespace):
    """The preset changed by the flags, validated; and ``{field: value}`` for every setting flag given (each
    flag's ``dest`` is its field's name)."""
    from mpn_tutorial.config import TrainConfig
    from mpn_tutorial.presets import get_preset

    changes = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
               if f.name != "preset" and getattr(args, f.name, None) is not None}
    config = get_preset(args.preset or "glyphs", **changes)
    config.validate()
    return config, changes


def run_name(config, changes: dict) -> str:
    """The default run folder's name: preset, loss, every flag in ``changes`` (``{field: value}``) that changed
    what the preset computes (``config.names_run``: not where or how fast, not a file), seed:
    ``runs/glyphs-mpn-seed0``; ``runs/glyphs-mpn-lr0.1-seed0`` after ``--lr 0.1``."""
    from mpn_tutorial.config import TrainConfig, names_run
    from mpn_tutorial.presets import get_preset
    from mpn_tutorial.tools.settings import flag_of

    preset = get_preset(config.preset)
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    parts = [config.preset, config.loss]
    for name, value in sorted(changes.items(), key=lambda item: flag_of(fields[item[0]])):
        if name in ("loss", "seed") or not names_run(name) or getattr(preset, name) == value:
            continue
        flag = flag_of(fields[name])
        if isinstance(value, bool):
            parts.append(flag if value else f"no-{flag}")
        elif isinstance(value, tuple):
            parts.append(flag + "-".join(map(str, value)))
        else:
            parts.append(flag + (f"{value:g}" if isinstance(value, float) else str(value)))
    return "-".join(parts + [f"seed{config.seed}"])


def train_command(args: argparse.Namespace) -> int:
    from mpn_tutorial.tools import distributed as dist_module
    from mpn_tutorial.training import train

    config, changes = _config(args)
    distributed = dist_module.from_environment(config)
    is_main = distributed is None or distributed.is_main
    name = run_name(config, changes)
    checkpoint_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else Path("runs") / name
    callbacks = _loggers(checkpoint_dir) if is_main else []
    if is_main:
        what = "continuing" if args.resume and (checkpoint_dir / "last.pt").exists() else "training"
        print(f"{what} {name}: {config.epochs} epochs, checkpoints in {checkpoint_dir}")
    try:
        with _machine_errors(checkpoint_dir):
            result = train(config, callbacks=callbacks, checkpoint_dir=checkpoint_dir, resume=args.resume,
                           progress=not args.no_progress, compute_nmi=not args.no_nmi, distributed=distributed,
                           overwrite=args.overwrite)
    finally:
        if distributed is not None:
            distributed.close()
    if is_main:
        for row in result.history:
            attention = row.get("attention")
            shown = f"  attention share {attention['share']:.3f}" if attention else ""
            print(f"epoch {row['epoch']:3d}  val {_format_metrics(row['val'])}{shown}")
        print(f"best epoch {result.best_epoch} (by validation R@1); {result.seconds:.1f} s")
        print(f"test  {_format_metrics(result.test_metrics)}")
        print(f"saved in {checkpoint_dir}: best.pt, last.pt, metrics.csv")
    return 0


def kept(folder: Path, resume: str) -> str:
    """What a run folder holds now, in words: the checkpoint the run can continue from (how: ``resume``), or
    that nothing of it is saved."""
    from mpn_tutorial.tools.checkpoints import CheckpointError, load_checkpoint

    last = folder / "last.pt"
    if not last.exists():
        return f"no epoch of this run had finished, so nothing of it is saved in {folder}"
    try:
        epoch = load_checkpoint(last)["epoch"]
    except CheckpointError:
        return f"{last} is not readable; train the run again"
    return f"{last} holds epoch {epoch} and is intact: {resume}"


@contextlib.contextmanager
def _machine_errors(folder: Path, resume: str = "run the same command with --resume to continue from it"):
    """Turn the machine's errors during a run into one line that says what happened and what was kept."""
    import torch

    from mpn_tutorial.errors import DiskFullError, MachineError

    try:
        yield
    except DiskFullError as error:
        raise MachineError(f"{error.strerror}. {kept(folder, resume)}.") from error
    except (MemoryError, torch.cuda.OutOfMemoryError) as error:
        where = "the GPU" if isinstance(error, torch.cuda.OutOfMemoryError) else "the machine (CPU memory)"
        raise MachineError(
            f"{where} ran out of memory. {kept(folder, resume)}. Lower the memory a step needs with a smaller batch "
            "(--classes-per-batch), activation checkpointing (--checkpointing) or a smaller --image-size."
        ) from error


def _loggers(folder: Path) -> list:
    from mpn_tutorial.callbacks import CSVLogger, TensorBoardLogger

    loggers = [CSVLogger(folder / "metrics.csv")]
    with contextlib.suppress(ImportError):  # TensorBoard is optional; metrics.csv has the same numbers
        loggers.append(TensorBoardLogger(folder / "tensorboard"))
    return loggers


# -- compare ---------------------------------------------------------------------------------
# named flag sets; NAME=FLAGS on the command line defines others
VARIANTS = {"messages": "", "no-messages": "--attention none --message-warmup-epochs 0", "oracle": "--attention oracle"}


def variant(text: str) -> tuple[str, str]:
    """An argparse type: ``NAME`` (one of VARIANTS) or ``NAME=FLAGS`` (any train flags)."""
    name, separator, flags = text.partition("=")
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise argparse.ArgumentTypeError(f"a variant is NAME or NAME='--flag value ...' with a name of letters, "
                                         f"digits and - _ . ; got {text!r}")
    if not separator:
        if name not in VARIANTS:
            raise argparse.ArgumentTypeError(f"unknown variant {name!r}: use one of {', '.join(VARIANTS)}, or "
                                             f"{name}='--flag value ...' with train flags")
        return name, VARIANTS[name]
    return name, flags


def compare(args: argparse.Namespace) -> int:
    import copy
    import shlex

    from mpn_tutorial.tools import distributed as dist_module
    from mpn_tutorial.tools.stats import measure, run_comparison, write_comparison
    from mpn_tutorial.training import train

    names = [name for name, _ in args.variants]
    if args.seed is not None or any("--seed " in flags for _, flags in args.variants):
        raise UsageError("compare trains every variant with each of --seeds; --seed (one run's seed) does not "
                         "apply here: use --seeds")
    if len(set(names)) != len(names):
        raise UsageError(f"variant names must differ, got {names}")
    configs, flags = {}, dict(args.variants)
    for name, text in args.variants:
        namespace = copy.copy(args)
        try:
            args.train_flags().parse_args(shlex.split(text), namespace=namespace)
        except ValueError as error:
            raise UsageError(f"variant {name}: {text!r} is not a set of train flags ({error}; see train --help)") \
                from None
        configs[name], _ = _config(namespace)
    if dist_module.from_environment(configs[names[0]]) is not None:
        raise UsageError("compare trains its runs one after another in one process; run it without torchrun")
    args.preset = args.preset or "glyphs"
    output = Path(args.output) if args.output else Path("runs") / f"compare-{args.preset}"
    start = time.perf_counter()

    def run(name, config):
        folder = output / f"{name}-seed{config.seed}"
        print(f"== {name}, seed {config.seed} -> {folder}", flush=True)
        with _machine_errors(folder, resume="run the same compare command again: it continues every run"):
            result = train(config, callbacks=_loggers(folder), checkpoint_dir=folder, resume=True,
                           progress=not args.no_progress, compute_nmi=False)
            return {**measure(result), "folder": str(folder)}

    def report(name, measured):
        share = f"  share {measured['test_share']:.3f}" if "test_share" in measured else ""
        print(f"   test R@1 {100 * measured['test_recall@1']:.2f}  MAP@R {100 * measured['test_map@r']:.2f}{share}")

    results = run_comparison(configs, args.seeds, run, report)
    header = {"title": f"compare: {args.preset}, {len(names)} variants × {len(args.seeds)} seeds",
              "preset": args.preset, "seeds": args.seeds, "variants": flags,
              "command": "python -m mpn_tutorial " + " ".join(shlex.quote(a) for a in args.argv),
              "machine": _machine(), "minutes": round((time.perf_counter() - start) / 60, 2),
              "selection": "each run's best epoch by validation R@1; test classes only measured"}
    markdown, data = write_comparison(output / "comparison", results, header)
    print(markdown.read_text())
    print(f"tables in {markdown} and {data}")
    return 0


def _machine() -> str:
    import platform

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "CPU"
    return f"{device}; torch {torch.__version__}; {torch.get_num_threads()} CPU threads"


# -- evaluate --------------------------------------------------------------------------------
def evaluate(args: argparse.Namespace) -> int:
    from mpn_tutorial.data.build import build_datasets
    from mpn_tutorial.evaluation import attention_diagnostics, diagnostic_batches, evaluate_on_test
    from mpn_tutorial.tools.checkpoints import CheckpointError, load_model
    from mpn_tutorial.tools.runtime import resolve_device
    from mpn_tutorial.tools.stats import SHARE_BATCHES

    model, config = load_model(args.checkpoint)
    if args.preset is not None and args.preset != config.preset:
        raise CheckpointError(f"checkpoint {args.checkpoint} was trained with preset {config.preset!r}, not "
                              f"{args.preset!r}")
    if args.refine_k and args.refine_method.startswith("mpn") and model.mpn is None:
        raise UsageError(f"--refine-k with --refine-method {args.refine_method} needs a model trained with message "
                         f"passing; {args.checkpoint} has loss {config.loss!r} (--refine-method mean works for any)")
    config = config.replace(**{name: getattr(args, name) for name in ("data_root", "device")
                               if getattr(args, name) is not None})
    model.to(resolve_device(config.device))
    datasets = build_datasets(config)
    metrics = evaluate_on_test(model, datasets, config.dataset, compute_nmi=not args.no_nmi, refine_k=args.refine_k,
                               refine_method=args.refine_method, batch_size=config.eval_batch_size, seed=config.seed)
    print(f"{config.preset} test classes ({metrics['queries']} queries): {_format_metrics(metrics)}")
    if model.has_attention:
        chance = (config.samples_per_class - 1) / (config.classes_per_batch * config.samples_per_class - 1)
        for split, dataset, count in (("validation", datasets.val, config.attention_batches or 4),
                                      ("test", datasets.evaluation, SHARE_BATCHES)):
            batches = diagnostic_batches(dataset, count, config.classes_per_batch, config.samples_per_class)
            print(f"attention on {count} {split}-class {config.classes_per_batch}×{config.samples_per_class} batches "
                  f"(chance share {chance:.3f}): {_format_attention(attention_diagnostics(model, batches))}")
    return 0


def _format_attention(diagnostics: dict[str, float]) -> str:
    names = {"share": "same-class share", "similarity_share": "backbone-similarity share",
             "self_weight": "self-weight", "score_spread": "score spread"}
    shown = [f"{label} {diagnostics[key]:.3f}" for key, label in names.items() if key in diagnostics]
    heads = [f"{key[len('share_'):].replace('_', ' ')} {value:.3f}" for key, value in diagnostics.items()
             if key.startswith("share_layer")]
    return ", ".join(shown) + (f" (per head: {', '.join(heads)})" if len(heads) > 1 else "")


# -- fetch -----------------------------------------------------------------------------------
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


def fetch(args: argparse.Namespace) -> int:
    """0 when the data is ready, 2 when a manual download is needed, 1 when fetching failed."""
    from mpn_tutorial.tools.fetch import FetchError, ManualDownloadRequired, fetch_dataset
    from mpn_tutorial.tools.registry import dataset_source

    try:
        source = dataset_source(args.name)
        ready = fetch_dataset(args.name, args.data_root or "data", progress=_ProgressPrinter())
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


def answer_key(args: argparse.Namespace) -> int:
    from mpn_tutorial.tools.answer_key import write_answer_key

    feedback = write_answer_key(args.notebooks, args.output)
    said = [text for exercises in feedback.values() for text in exercises.values()]
    wrong = [text for text in said if "correct" not in text]
    print(f"answer key written to {args.output}: {len(said) - len(wrong)} of {len(said)} checks say correct")
    return 0 if not wrong else 1
