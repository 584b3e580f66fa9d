"""The `vitkit` command: each verb parses its options and calls one function of the Python API."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def cmd_models(args: argparse.Namespace) -> int:
    from vitkit.models import describe, list_models

    names = list_models()
    if args.filter:
        names = [n for n in names if args.filter.lower() in n.lower()]
        if not names:
            print(f"no model name contains {args.filter!r}; run `vitkit models` for the list", file=sys.stderr)
            return 2
    rows = [describe(n) for n in names]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<14} {'params':>13} {'image':>6} {'GFLOPs':>9} {'GMACs':>9}")
    for r in rows:
        print(f"{r['name']:<14} {_fmt_int(r['params']):>13} {r['image_size']:>6} {r['gflops']:>9.2f} {r['gmacs']:>9.2f}")
    print("GFLOPs: one image's forward pass at the default size, 1000 classes (1 MAC = 2 FLOPs).")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitkit",
        description="Vision Transformers as in 'An Image is Worth 16x16 Words': models, training, transfer, analysis.",
    )
    parser.add_argument("--version", action="version", version=f"vitkit {_version()}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    p = sub.add_parser("models", help="list the model variants with parameters and GFLOPs",
                       description="Every named variant with its parameter count and forward GFLOPs at its default size "
                                   "(224 px, 3 channels, 1000 classes), counted on the meta device without allocating weights.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--filter", metavar="TEXT", help="only names containing TEXT (e.g. 'R50' or '/16')")
    p.set_defaults(func=cmd_models)
    return parser


def _version() -> str:
    from vitkit import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    try:
        return func(args)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"vitkit {args.verb}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
