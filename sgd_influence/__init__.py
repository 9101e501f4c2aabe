"""SGD-influence (Hara et al., 2019) and its storage-efficient variant (Suzuki et al., 2021):
the backward recursion over the last epoch (``infl``), over all epochs with replayed parameters
(``replay``), error explanations (``explain``) and the pipeline's "Hara", "Ours" and
"Hara_all_epochs" estimators (``estimators``)."""
from .estimators import ESTIMATORS, Hara, HaraAllEpochs, Ours, ReplayOptions

__all__ = ["ESTIMATORS", "Hara", "HaraAllEpochs", "Ours", "ReplayOptions"]
