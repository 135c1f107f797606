"""Command line: ``python -m mpn_tutorial COMMAND --help``."""

from __future__ import annotations

import argparse
import sys
import time


def _make_data(args: argparse.Namespace) -> int:
    from mpn_tutorial.data.glyphs import cache_path, load_glyphs

    path = cache_path(args.root, args.seed, args.image_size, args.images_per_class)
    existed = path.exists()
    start = time.perf_counter()
    arrays = load_glyphs(args.root, args.seed, args.image_size, args.images_per_class)
    seconds = time.perf_counter() - start
    split = arrays["class_split"]
    verb = "found" if existed else f"generated in {seconds:.1f} s:"
    print(
        f"glyphs {verb} {path} — {len(arrays['images'])} images of {len(split)} classes "
        f"(train {int((split == 0).sum())}, val {int((split == 1).sum())}, test {int((split == 2).sum())} classes)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mpn_tutorial",
        description="Deep metric learning with message passing over the mini-batch.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    make_data = commands.add_parser("make-data", help="generate the offline glyph dataset (cached under --root)")
    make_data.add_argument("name", choices=["glyphs"], help="dataset to generate")
    make_data.add_argument("--root", default="data", help="data folder (default: data)")
    make_data.add_argument("--seed", type=int, default=0)
    make_data.add_argument("--image-size", type=int, default=32)
    make_data.add_argument("--images-per-class", type=int, default=48)
    make_data.set_defaults(handler=_make_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
