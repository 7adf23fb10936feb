"""Arguments of the ``scae`` command shared by its subcommands, and the types that check their values."""

from __future__ import annotations

import argparse

#: Help of ``--fcs-dir``.
FCS_DIR_HELP = (
    "also write FCS files with the embedding and cluster channels to DIR (scae.io.write_fcs): one per input "
    ".fcs file, else one; intensities as in IN"
)
#: Help of ``--arcsinh``.
ARCSINH_HELP = "transform the input first: arcsinh(x / COFACTOR), 5 for CyTOF, ~150 for flow (scae.pp.arcsinh)"


def positive_float(text: str) -> float:
    """The ``--arcsinh`` value: a finite number > 0 (else a usage error, exit code 2)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value < float("inf")):
        msg = f"expected a number > 0, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def positive_int(text: str) -> int:
    """The ``--threads`` value: an int >= 1 (else a usage error, exit code 2)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        msg = f"expected an int >= 1, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


#: The levels of ``-v``: 0 errors, 1 info, 2 debug.
VERBOSITY = (0, 1, 2)


def add_input_args(p: argparse.ArgumentParser) -> None:
    """IN and the options of reading it (``fit`` and ``transform``)."""
    p.add_argument("input", nargs="+", help="input .h5ad or .zarr, or .fcs files (one panel; obs['sample'] per file)")
    p.add_argument("--arcsinh", type=positive_float, default=None, metavar="COFACTOR", help=ARCSINH_HELP)
    p.add_argument("--all-channels", action="store_true", help="FCS: keep every channel, not only the markers")
    p.add_argument("--compensate", action="store_true", help="FCS: apply each file's spillover matrix (flow)")
    p.add_argument("--fcs-dir", default=None, metavar="DIR", help=FCS_DIR_HELP)


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Options of every subcommand."""
    p.add_argument("--seed", type=int, default=None, help="random_state (default 0)")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="CPU threads of torch (default: one per core); give it for identical reruns on other machines",
    )
    p.add_argument(
        "-v", "--verbosity", type=int, default=argparse.SUPPRESS, choices=VERBOSITY, help="0 errors, 1 info, 2 debug"
    )
