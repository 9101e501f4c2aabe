"""Command-line arguments shared by the drivers, their validation, and error reporting."""
from __future__ import annotations

import argparse
import sys
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

from common.errors import UserError

from .estimator import Registry
from .settings import add_arguments, fraction, output_folder, values_from_args

if TYPE_CHECKING:
    from .config import RunConfig

__all__ = ["Driver", "OneLineParser", "add_run_arguments", "config_from_args", "fraction", "output_folder",
           "run_main"]


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see --help)\n")


def add_run_arguments(p: argparse.ArgumentParser, default_out: str, remove_default: Sequence[int],
                      explain_max: int = 0) -> None:
    """The original example's flags plus the project's (docs/SPEC.md section 3, without the
    estimators' own options and ``--methods``), generated from ``cleansing.settings.SETTINGS``;
    ``explain_max``: the driver's default number of test errors explained."""
    from .config import field_defaults
    add_arguments(p, field_defaults(), {"out": default_out, "remove": remove_default, "explain_max": explain_max})


def run_main(main: Callable[[Optional[List[str]]], int], argv: Optional[List[str]] = None) -> int:
    """Run ``main``; a ``UserError`` (or any failure without --debug) becomes one line on stderr."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        return main(args) or 0
    except UserError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk outside the atomic writers (h5py, nnabla): still one line
        from common.fileio import DISK_FULL
        if debug:
            traceback.print_exc()
        if exc.errno in DISK_FULL:
            print(f"error: no space left on the device ({exc.filename or 'while writing'}); free some space "
                  f"and rerun the same command to continue", file=sys.stderr)
            return 2
        print(f"error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue where it stopped", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure: one line unless --debug
        if debug:
            traceback.print_exc()
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"error: {type(exc).__name__}: {msg} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


def config_from_args(a: argparse.Namespace, registry: Registry) -> RunConfig:
    """The ``RunConfig`` of parsed driver flags (``Driver.parser``)."""
    from .config import make_config
    options = {kind.__name__: kind.from_args(a) for kind in registry.option_types()}
    return make_config(**values_from_args(a), methods=a.methods, options=options)


@dataclass(frozen=True)
class Driver:
    """A command-line driver: every registered estimator and its options, with the driver's defaults
    (output folder, methods, number of explained test errors)."""

    description: str
    out: str
    methods: Tuple[str, ...]
    explain_max: int = 0

    def parser(self, registry) -> argparse.ArgumentParser:
        from .config import DEFAULT_REMOVE
        listed = "\n".join(f"  {e.name}: {e.ranks}" if e.ranks else f"  {e.name}" for e in registry)
        p = OneLineParser(description=self.description, formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog="methods (--methods) and what each ranks by (first rows of its influence CSV "
                                 "first):\n" + listed)
        add_run_arguments(p, self.out, DEFAULT_REMOVE, explain_max=self.explain_max)
        p.add_argument("--methods", nargs="+", default=list(self.methods), metavar="METHOD",
                       help=f"estimators to run, in this order (default: %(default)s); any of: "
                            f"{', '.join(registry.names)} (each described at the end of this help)")
        for kind in registry.option_types():
            kind.add_arguments(p)
        return p

    def config(self, argv: Optional[List[str]], registry):
        """The ``RunConfig`` these command-line arguments give."""
        return config_from_args(self.parser(registry).parse_args(argv), registry)

    def main(self, argv: Optional[List[str]], registry) -> int:
        from .pipeline import run
        args = self.parser(registry).parse_args(argv)
        summary = run(config_from_args(args, registry), registry, overwrite=args.overwrite)
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print(f"results in {args.output}/ (summary/summary.csv, fig/result.png)")
        return 0
