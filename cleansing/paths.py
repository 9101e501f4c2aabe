"""The output folder tree (docs/SPEC.md section 4): every path a run writes is named here."""
from __future__ import annotations

from pathlib import Path
from typing import List, Union

#: file name of the stored validation gradient (``RunPaths.validation_grad``): it depends on the
#: validation data, so the "influence" scope of ``cleansing.outdir`` removes it with the scores
VALIDATION_GRAD = "validation_grad.npz"


class RunPaths:
    """Paths of every file a run writes under its output folder ``root``."""

    def __init__(self, root: Union[str, Path]):
        self.root = Path(root)

    # parameter cache and trace
    def weights(self, seed: int) -> Path:
        return self.root / "weights" / f"seed_{seed:02d}"

    def params(self, seed: int, which: str) -> Path:
        """``which``: 'initial', 'start_last_epoch' or 'final'."""
        return self.weights(seed) / f"{which}.h5"

    def steps_dir(self, seed: int) -> Path:
        """Per-step parameters of the last epoch (estimators with ``needs_step_params``: Hara's cache)."""
        return self.weights(seed) / "hara"

    def epochs_dir(self, seed: int) -> Path:
        """The epochs before the last, one training and one evaluation task each (removed once
        ``train_log.csv`` holds their rows, but for their parameters when an estimator needs them)."""
        return self.weights(seed) / "epochs"

    def epoch_params(self, seed: int, epoch: int) -> Path:
        """Parameters after epoch ``epoch`` (1-based) of the epochs before the last but one."""
        return self.epochs_dir(seed) / f"epoch_{epoch:03d}.h5"

    def after_epoch(self, seed: int, epoch: int, epochs: int) -> Path:
        """The parameters after epoch ``epoch`` of ``epochs`` (0: the initial ones, ``epochs``: the final
        ones; the epochs before the last but one are kept only for ``Estimator.needs_epoch_params``)."""
        if epoch == epochs:
            return self.params(seed, "final")
        if epoch == 0:
            return self.params(seed, "initial")
        return self.params(seed, "start_last_epoch") if epoch == epochs - 1 else self.epoch_params(seed, epoch)

    def epoch_param_files(self, seed: int, epochs: int) -> List[Path]:
        """The stored parameters after each epoch 1 .. ``epochs`` (those that exist)."""
        files = [self.after_epoch(seed, e, epochs) for e in range(1, epochs + 1)]
        return [f for f in files if f.is_file()]

    def epoch_log(self, seed: int, epoch: int, part: str = "") -> Path:
        """Epoch ``epoch``'s ``train_log.csv`` row (``part="train"``: its training half, which marks
        the epoch's training task complete; written last by that task)."""
        return self.epochs_dir(seed) / f"epoch_{epoch:03d}{'_' + part if part else ''}.csv"

    def step_params(self, seed: int, step: int) -> Path:
        """Parameters before global step ``step`` (a step of the last epoch)."""
        return self.steps_dir(seed) / f"step_{step:06d}.h5"

    def artefact(self, seed: int, name: str) -> Path:
        """Folder of a trained artefact of an estimator (e.g. ``turnover``: a turn-over-dropout network)."""
        return self.weights(seed) / name

    def trace(self, seed: int) -> Path:
        return self.weights(seed) / "trace.npz"

    def epoch_margins(self, seed: int, epoch: int) -> Path:
        """The margins the training steps of epoch ``epoch`` (1-based, before the last) saw."""
        return self.epochs_dir(seed) / f"epoch_{epoch:03d}_margins.npz"

    def margins(self, seed: int) -> Path:
        """Every epoch's margin of every training sample (``train.merge_margins``: the AUM's input)."""
        return self.weights(seed) / "margins.npz"

    def validation_grad(self, seed: int) -> Path:
        """``u`` and ``u_stats`` at the final parameters (``Trial.u``), computed once for every estimator."""
        return self.weights(seed) / VALIDATION_GRAD

    def train_log(self, seed: int) -> Path:
        return self.weights(seed) / "train_log.csv"

    def head_log(self, seed: int) -> Path:
        """Log of the epochs before the last (written last by the first training task: marks it complete)."""
        return self.weights(seed) / "head_log.csv"

    # results
    def influence_csv(self, method: str, seed: int) -> Path:
        return self.root / "influence" / method / f"influence_{method.lower()}_{seed}.csv"

    def score_csv(self, method: str, n: int, seed: int) -> Path:
        return self.root / "score" / method / f"score_delete_worst_{n}_seed_{seed}.csv"

    def retrained_nnp(self, method: str, n: int, seed: int) -> Path:
        """The model retrained without ``method``'s ``n`` most harmful samples, as an .nnp (``--save-nnp``;
        beside its scores, so that whatever invalidates them removes it too)."""
        return self.root / "score" / method / f"model_delete_worst_{n}_seed_{seed}.nnp"

    def final_nnp(self, seed: int) -> Path:
        """The trained model as an .nnp (``--save-nnp``)."""
        return self.weights(seed) / "final.nnp"

    def table(self, stem: str, seed: int) -> Path:
        """An estimator's or artefact's table of one trial."""
        return self.summary / f"{stem}_{seed}.csv"

    def figure(self, stem: str, seed: int) -> Path:
        """An estimator's or artefact's figure of one trial."""
        return self.fig / f"{stem}_{seed}.png"

    def log(self, stem: str, seed: int) -> Path:
        """An estimator's log of one trial (e.g. a solver's report)."""
        return self.root / "logs" / f"{stem}_seed_{seed}.csv"

    def timings(self, seed: int) -> Path:
        return self.log("timings", seed)

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def run_table(self, name: str) -> Path:
        """A table of the whole run: summary, cache_size, timings, validation, detection, ..."""
        return self.summary / f"{name}.csv"

    def run_figure(self, name: str) -> Path:
        """A figure of the whole run: result, detection, validation_<Method>."""
        return self.fig / f"{name}.png"

    def gallery(self, method: str, seed: int) -> Path:
        """The most harmful training images of ``method`` (a CSV beside it above 100 images)."""
        return self.fig / f"harmful_{method.lower()}_seed{seed}.png"

    @property
    def cleansed(self) -> Path:
        """Cleansed NNC CSVs (``--cleanse``)."""
        return self.root / "cleansed"

    def cleansed_csv(self, method: str, seed: int, n: int) -> Path:
        return self.cleansed / f"{method.lower()}_seed{seed}_remove{n}.csv"

    @property
    def images(self) -> Path:
        """Built-in datasets' images as PNG, for the cleansed CSVs."""
        return self.root / "images"

    def explain_csv(self, method: str, seed: int) -> Path:
        return self.table(f"explain_errors_{method}", seed)

    def explain_png(self, method: str, seed: int) -> Path:
        return self.figure(f"explain_errors_{method}", seed)

    def lds_subset(self, seed: int, tag: str, subset: int) -> Path:
        """The scores of LDS subset ``subset`` retrained (``tag``: its counterfactual, retraining and fraction)."""
        return self.logs / f"lds_seed_{seed}" / tag / f"subset_{subset:04d}.csv"

    def lds_target_scores(self, seed: int, method: str, targets: int) -> Path:
        """``method``'s scores with each of the first ``targets`` test images as its target (``--lds-targets``)."""
        return self.logs / f"lds_seed_{seed}" / f"targets{targets}" / f"{method}.csv"

    def validation_repeat(self, seed: int, repeat: int) -> Path:
        return self.root / "logs" / f"validation_actual_seed_{seed}_repeat_{repeat}.csv"

    def validation_progress(self, seed: int, repeat: int) -> Path:
        """The left-out retrainings of a validation repeat finished so far (while it runs)."""
        return self.root / "logs" / f"validation_progress_seed_{seed}_repeat_{repeat}.csv"

    def validation_pairs(self, seed: int) -> Path:
        return self.log("validation_pairs", seed)

    @property
    def summary(self) -> Path:
        return self.root / "summary"

    @property
    def fig(self) -> Path:
        return self.root / "fig"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"
