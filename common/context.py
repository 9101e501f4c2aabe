"""Choosing where nnabla computes: ``cpu`` or ``cudnn`` (nnabla-ext-cuda)."""
from __future__ import annotations

import importlib.util
import os
from typing import Optional

from .errors import UserError

CUDA_HINT = "pip install nnabla-ext-cuda120 (CUDA 12 driver needed), or run with -c cpu"


def cuda_extension_available() -> bool:
    """True when the nnabla CUDA extension can be imported."""
    return importlib.util.find_spec("nnabla_ext") is not None and \
        importlib.util.find_spec("nnabla_ext.cudnn") is not None


def default_context_name() -> str:
    """``cudnn`` when nnabla-ext-cuda is installed, else ``cpu``."""
    return "cudnn" if cuda_extension_available() else "cpu"


def set_context(name: Optional[str] = None, device_id: int = 0):
    """Make ``name`` (``cpu``/``cudnn``; None = default) nnabla's default context and return it.

    For cuDNN, deterministic algorithm selection is switched on before the extension loads
    (``NNABLA_CUDNN_DETERMINISTIC``, ``NNABLA_CUDNN_ALGORITHM_BY_HEURISTIC``), as the original
    example did, so that the same seed gives the same influence scores.
    """
    import nnabla as nn
    from nnabla.ext_utils import get_extension_context

    name = name or default_context_name()
    if name not in ("cpu", "cudnn"):
        raise UserError(f"unknown context '{name}'; use -c cpu or -c cudnn")
    if name == "cudnn":
        os.environ.setdefault("NNABLA_CUDNN_DETERMINISTIC", "1")
        os.environ.setdefault("NNABLA_CUDNN_ALGORITHM_BY_HEURISTIC", "1")
        if not cuda_extension_available():
            raise UserError(f"-c cudnn needs the nnabla CUDA extension, which is not installed: {CUDA_HINT}")
        try:
            ctx = get_extension_context("cudnn", device_id=str(device_id), type_config="float")
        except Exception as exc:  # the extension is present but CUDA is not usable
            raise UserError(f"-c cudnn could not start on device {device_id} ({exc}); "
                            f"check the driver and -di, or run with -c cpu") from None
    else:
        ctx = get_extension_context("cpu", type_config="float")
    nn.set_default_context(ctx)
    return ctx
