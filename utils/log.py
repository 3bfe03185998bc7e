"""Logging to the terminal and a file beside the outputs, and when to show tqdm bars."""

from __future__ import annotations

import logging
import os
import sys

from utils.errors import UserError


def setup_logging(log_file: str | os.PathLike | None = None, quiet: bool = False) -> logging.Logger:
    """Log to stderr and, when given, to a file beside the outputs (appending, so reruns are kept)."""
    logger = logging.getLogger("clom")
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    if not quiet:
        stream = logging.StreamHandler(sys.stdout)
        stream.setFormatter(fmt)
        logger.addHandler(stream)
    if log_file is not None:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
            file_handler = _LogFile(log_file)
        except OSError as err:
            raise UserError(f"cannot write the log file {log_file}: {err.strerror or err}") from None
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    logger.propagate = False
    return logger


class _LogFile(logging.FileHandler):
    """A log file that, when the disk refuses a line (full, file-size limit), says so once on stderr and
    stops writing to it, instead of logging's traceback per line; the run itself goes on (or stops with its
    own one-line error)."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        err = sys.exc_info()[1]
        sys.stderr.write(f"warning: cannot write the log file {self.baseFilename} "
                         f"({getattr(err, 'strerror', None) or err}); logging to the terminal only\n")
        logging.getLogger("clom").removeHandler(self)
        self.close()


def get_logger() -> logging.Logger:
    return logging.getLogger("clom")


def progress_disabled() -> bool:
    """tqdm bars only on a terminal, so logs of sweeps stay grep-able."""
    return not sys.stderr.isatty()
