"""User-facing errors: one line on stderr, a non-zero exit, no traceback."""
from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable, TypeVar

T = TypeVar("T")


class UserError(Exception):
    """A problem the user can fix (bad parameter, corrupt input, missing artifact)."""


def exits_cleanly(main: Callable[..., T]) -> Callable[..., T]:
    """Turn a UserError raised by `main` into `error: <message>` and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as a UserError: `error: <prog>: <message>`, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}")
