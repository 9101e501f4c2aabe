"""SGD-influence (Hara et al., 2019) and its storage-efficient variant (Suzuki et al., 2021):
the backward recursion over the last epoch (``infl``), error explanations (``explain``) and the
pipeline's "Hara" and "Ours" estimators (``estimators``)."""
from .estimators import ESTIMATORS, Hara, Ours

__all__ = ["ESTIMATORS", "Hara", "Ours"]
