"""Entry point of the ``castore`` command."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="castore", description="Content-addressed checkpoint store"
    )
    parser.parse_args(argv)
    parser.print_help()
    return 0
