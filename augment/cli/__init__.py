"""The `augment` command line: argparse (`main.build_parser`) and one adapter per command area, which turns the
parsed options into the typed config the domain code takes. Nothing here imports torch or Ray at module level."""

from augment.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
