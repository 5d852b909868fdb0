"""One exception type for every user-facing failure, and the wrapper that turns it into a one-line error."""

from __future__ import annotations

import sys
from collections.abc import Callable

# Exit statuses of the simcaptcha command and of the stage scripts (documented in ``simcaptcha --help``).
EXIT_OK = 0
EXIT_ERROR = 1  # a SimcaptchaError: bad data, params, input or output; one line "error: ..." on stderr
EXIT_USAGE = 2  # a bad command line: argparse's own status
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports a process killed by SIGINT (128 + 2)

# Escapes for the line breaks a name taken from the data (a file, a JSON entry) may hold.
_LINE_BREAKS = {ord(char): repr(char)[1:-1] for char in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


class SimcaptchaError(Exception):
    """A problem with the user's input or parameters; its message names the file or key at fault."""


def run_main(main: Callable[[], object]) -> None:
    """Run a stage or CLI entry point: user errors print one line on stderr and exit with ``EXIT_ERROR``."""
    try:
        main()
    except SimcaptchaError as error:
        print(f"error: {str(error).translate(_LINE_BREAKS)}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
