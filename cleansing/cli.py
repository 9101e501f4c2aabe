"""Command-line arguments shared by the drivers, their validation, and error reporting."""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

from common.errors import UserError

from .estimator import nonneg_int, positive_float, positive_int


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see --help)\n")


def output_folder(text: str) -> str:
    """A non-empty -o value."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty; give an output folder")
    return text


def fraction(text: str) -> float:
    """A label-noise fraction in [0, 1)."""
    from datasets.noise import check_fraction
    try:
        return check_fraction(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def model_name(text: str) -> str:
    """A -m value: a model name, or the path of an existing .nnp file (made absolute, so that the
    manifest and every worker name the same file)."""
    from models import MODELS
    if text in MODELS:
        return text
    from models.nnp import check_nnp_file, is_nnp_path
    if not is_nnp_path(text) and not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(MODELS)}, or give "
                                         f"the path of an .nnp file)")
    try:
        check_nnp_file(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return os.path.abspath(text)


def add_run_arguments(p: argparse.ArgumentParser, default_out: str, remove_default: Sequence[int],
                      explain_max: int = 0) -> None:
    """The original example's flags plus the project's (docs/SPEC.md section 3, without the
    estimators' own options and ``--methods``); ``explain_max``: the driver's default number of test
    errors explained."""
    p.add_argument("-o", "--output", type=output_folder, default=default_out,
                   help="output folder (default: %(default)s)")
    p.add_argument("-ds", "--dataset", default="digits",
                   help="digits (embedded), mnist, cifar10, stl10, or a path to an NNC train CSV")
    p.add_argument("-m", "--model", default="cnn6", type=model_name,
                   help="cnn6 (the paper's network, default), logreg or mlp (fast checks), or the path of a "
                        "Neural Network Console model file (.nnp; see the README)")
    p.add_argument("--nnp-weights", action="store_true",
                   help="with -m FILE.nnp: start every trial from the file's parameter values (default: fresh "
                        "parameters per trial seed, nnabla's default initialisers on the file's shapes)")
    p.add_argument("-e", "--epochs", type=positive_int, default=20, help="training epochs (default 20)")
    p.add_argument("-bs", "--batch-size", type=positive_int, default=32, help="mini-batch size (default 32)")
    p.add_argument("-lr", "--learning-rate", type=positive_float, default=0.05, help="SGD learning rate (default 0.05)")
    p.add_argument("-nt", "--n-trials", type=positive_int, default=1, help="trials; trial k uses seed k (default 1)")
    p.add_argument("-r", "--remove", type=nonneg_int, nargs="+", default=list(remove_default),
                   help="numbers of most harmful samples to remove and retrain (default: %(default)s)")
    p.add_argument("-ra", "--retrain-all", action="store_true",
                   help="retrain every epoch from the initial parameters (default: the last epoch only)")
    p.add_argument("-c", "--context", choices=["cpu", "cudnn"], default=None,
                   help="nnabla context (default: cudnn when nnabla-ext-cuda is installed, else cpu)")
    p.add_argument("-di", "--device-id", type=nonneg_int, default=0, help="GPU device id (default 0)")
    p.add_argument("-j", "--jobs", type=positive_int, default=os.cpu_count() or 1,
                   help="Dask worker processes of the local cluster that runs the tasks (training, each "
                        "estimator, each retraining, each validation repeat; default: number of cores); "
                        "1: every task in this process, no cluster; more than the cores this process may "
                        "run on: capped at that number, with a warning")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the tasks on an existing Dask cluster (e.g. tcp://host:8786) whose workers "
                        "share the output folder, instead of a local one")
    p.add_argument("--data-dir", default=None, help="folder that already holds the dataset's files (default: "
                        "$DATA_CLEANSING_DATA_DIR, then the usual cache folders)")
    p.add_argument("--n-train", type=positive_int, default=None,
                   help="use the first N samples of the seeded training split")
    p.add_argument("--n-val", type=positive_int, default=None, help="use the first N samples of the validation split")
    p.add_argument("--n-test", type=positive_int, default=None, help="use the first N test samples")
    p.add_argument("--val-csv", default=None, help="own data: validation CSV (default: beside the train CSV)")
    p.add_argument("--test-csv", default=None, help="own data: test CSV (default: beside the train CSV)")
    p.add_argument("--validate", type=nonneg_int, default=0, metavar="K",
                   help="after the influence stage, compare each estimate with actual leave-one-out retraining "
                        "on about K samples (K/3 most negative, most positive, random per method)")
    p.add_argument("--validate-repeats", type=positive_int, default=1, metavar="R",
                   help="average each actual change over R retrainings: the exact replay and R-1 replays "
                        "from parameters nudged at float32 rounding level, which averages out the rounding "
                        "noise training amplifies (R times the retraining cost; -j runs repeats in parallel; "
                        "default 1)")
    p.add_argument("--label-noise", type=fraction, default=0.0, metavar="FRACTION",
                   help="flip this fraction of each trial's training labels (seeded, each to another class; "
                        "validation and test untouched); influence CSVs get a 'noisy' column and the run "
                        "summary/detection.csv and fig/detection.png (default 0)")
    p.add_argument("--gallery", type=nonneg_int, default=32, metavar="N",
                   help="fig/harmful_<method>_seed<k>.png: the N most harmful training images per method "
                        "and trial (a CSV above 100; 0: none; default 32)")
    p.add_argument("--cleanse", type=nonneg_int, nargs="+", default=[], metavar="N",
                   help="write cleansed/<method>_seed<k>_remove<N>.csv: the training set without the N most "
                        "harmful samples, as NNC CSV (with the trial's validation and test CSVs beside it)")
    g = p.add_argument_group("explaining test errors (paper of turn-over dropout, Fig. 5)")
    g.add_argument("--explain-max", type=nonneg_int, default=explain_max, metavar="N",
                   help="explain the first N misclassified test images per trial by their most influential "
                        "training images: fig/ and summary/explain_errors_*; Hara and Ours run one influence "
                        f"recursion per image (default {explain_max}; 0: none)")
    g.add_argument("--explain-k", type=positive_int, default=5, metavar="N",
                   help="training images shown per misclassified test image (default 5)")
    g.add_argument("--explain-same-label", action="store_true",
                   help="explain errors only by training images labelled as the wrong class (as the paper's figures)")
    p.add_argument("--no-augment", action="store_true", help="train without random crop and flip")
    p.add_argument("--overwrite", action="store_true",
                   help="when the folder's settings differ, recompute what the changed settings invalidate "
                        "(deletes only files this tool wrote)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


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


def config_from_args(a: argparse.Namespace, registry):
    """The ``RunConfig`` of parsed driver flags (``Driver.parser``)."""
    from .config import make_config
    train = dict(model=a.model, epochs=a.epochs, batch_size=a.batch_size, lr=a.learning_rate,
                 augment=not a.no_augment, nnp_weights=a.nnp_weights)
    options = {kind.__name__: kind.from_args(a) for kind in registry.option_types()}
    return make_config(
        **train, dataset=a.dataset, out=os.path.abspath(a.output), n_trials=a.n_trials, methods=a.methods,
        remove=a.remove, retrain_all=a.retrain_all, data_dir=a.data_dir and os.path.abspath(a.data_dir),
        n_train=a.n_train, n_val=a.n_val, n_test=a.n_test, val_csv=a.val_csv, test_csv=a.test_csv,
        context=a.context, device_id=a.device_id, jobs=a.jobs, scheduler=a.scheduler,
        show_progress=not a.no_progress, validate=a.validate, validate_repeats=a.validate_repeats,
        label_noise=a.label_noise, gallery=a.gallery, cleanse=a.cleanse, explain_k=a.explain_k,
        explain_max=a.explain_max, explain_same_label=a.explain_same_label, options=options)


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
