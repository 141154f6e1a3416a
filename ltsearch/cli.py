"""``ltsearch`` command line. User errors print one line and exit with code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ltmodels.errors import LTUserError


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from ltmodels.data.synthetic import SynthConfig, write_synthetic

    cfg = SynthConfig(
        num_classes=args.classes,
        train_images=args.train_images,
        val_images=args.val_images,
        image_size=args.image_size,
        seed=args.seed,
    )
    paths = write_synthetic(args.out, cfg)
    print(paths.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ltsearch", description="Hyperparameter studies for long-tail detection."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_cmd", required=True)
    synth = data.add_parser("synth", help="write the embedded synthetic long-tail dataset")
    from ltmodels.data.synthetic import SynthConfig

    d = SynthConfig()
    synth.add_argument("--out", required=True, help="output directory")
    synth.add_argument("--classes", type=int, default=d.num_classes)
    synth.add_argument("--train-images", type=int, default=d.train_images)
    synth.add_argument("--val-images", type=int, default=d.val_images)
    synth.add_argument("--image-size", type=int, default=d.image_size)
    synth.add_argument("--seed", type=int, default=d.seed)
    synth.set_defaults(func=_cmd_data_synth)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except LTUserError as exc:
        print(f"ltsearch: error: {exc}", file=sys.stderr)
        return 2


__all__ = ["build_parser", "main"]
