"""argparse types of exportctl's options: numbers that must be positive, keys that must not be blank, refused with a
usage error."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def positive_float(text: str) -> float:
    """A number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, not {text}")
    return value


def idempotency_key(text: str) -> str:
    """An Idempotency-Key that is not blank: an empty key would be no key (each retry another run), as the admin
    API refuses it."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty or blank (leave the option out for no key)")
    return text
