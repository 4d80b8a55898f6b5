"""The errors a user must fix: they end a stage or command with their message, no traceback."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class InputError(ValueError):
    """Bad input a user must fix (params, dataset, model file); the message says what and where."""


class ParamsError(InputError):
    """params.yaml (or overrides of it) does not match mobileast.schema; the message names
    the key, its section and the keys the section knows."""


@contextmanager
def params_errors(section: str) -> Iterator[None]:
    """Re-raise a ValueError (a ParamsError too) or TypeError of building something from
    params `section` as a ParamsError naming it, so the stage ends with the message."""
    try:
        yield
    except (ValueError, TypeError) as error:
        raise ParamsError(f"params.yaml, {section}: {error}") from None
