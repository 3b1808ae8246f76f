"""Logging set-up for every entry point: the ``promptgap`` command and a job started elsewhere (``executors.CellJob``);
below both, so neither imports the other for it."""

from __future__ import annotations

import logging
import os

FORMAT = "%(levelname)s %(name)s: %(message)s"


def quiet_libraries(verbose: bool = False) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # read when datasets is first imported
    if not verbose:  # lm-eval warns about every YAML it cannot resolve and every default it fills in
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def setup_logging(level: int, verbose: bool = False) -> None:
    """Log records at ``level`` and above to stderr, the libraries' own chatter quieted (kept with ``verbose``)."""
    logging.basicConfig(level=level, format=FORMAT)
    quiet_libraries(verbose)
