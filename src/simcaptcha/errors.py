"""One exception type for every user-facing failure, and the wrapper that turns it into a one-line error."""

from __future__ import annotations

import sys
from collections.abc import Callable


class SimcaptchaError(Exception):
    """A problem with the user's input or parameters; its message names the file or key at fault."""


def run_main(main: Callable[[], object]) -> None:
    """Run a stage or CLI entry point: user errors print one line on stderr and exit 2."""
    try:
        main()
    except SimcaptchaError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
