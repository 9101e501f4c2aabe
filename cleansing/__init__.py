"""The generic data-cleansing pipeline, which knows no estimator.

``config`` (the run's settings, grouped; each core setting declared once in ``settings``, the
rules for manifests of older versions in ``compat``), ``estimator`` (the interface an estimator implements and
the registry), ``trial`` (a trained trial as estimators see it), ``train``/``trace`` (training
with a recorded trace), ``retrain`` (counterfactual retraining without the most harmful samples),
``validate`` (leave-one-out truth), ``pipeline`` and ``graph`` (the run as tasks, in this process
or on Dask), ``folder``/``outdir``/``paths`` (the output folder: checks, ownership, every path),
``analyze``/``report``/``explain`` (summaries, figures, galleries, cleansed datasets), ``api``
(the Python API), ``cli`` (the drivers' flags).
"""
import logging

# nnabla configures the root logger at import time and announces itself at INFO level on stderr;
# configuring it first (every module of the pipeline imports this package before nnabla) keeps
# stderr for warnings and the one-line errors.
logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
