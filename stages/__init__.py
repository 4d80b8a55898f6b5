"""One thin script per DVC stage, run as `python -m stages.<name>` from the project root."""
from __future__ import annotations

from typing import Callable

from mobileast.errors import InputError


def run(main: Callable[[], None]) -> None:
    """Run a stage's main(); bad input (params, dataset) ends it with its message, no traceback."""
    try:
        main()
    except InputError as error:
        raise SystemExit(f"{main.__globals__['__spec__'].name.removeprefix('stages.')}: {error}") from None
