"""Stage 5 as runs: an Optuna search of the base learning rate of one model version, mode and budget, on
validation accuracy (resample 0 of the budget; the evaluation partition is never looked at).

Each trial is a nested MLflow run opened by the objective; a MedianPruner stops trials whose per-epoch validation
accuracy falls behind. `run_downstream(..., lr="tuned")` then trains with the search's best blr.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import optuna

from cyto_ssrl import names, tracking
from cyto_ssrl.checks import at_least, one_of
from cyto_ssrl.downstream.budgets import budget_seed, draw_budget
from cyto_ssrl.downstream.config import TRAINED_MODES
from cyto_ssrl.downstream.probe import VAL_ACC
from cyto_ssrl.downstream.setup import Setup, budget_loop, prepare, train_on_split
from cyto_ssrl.downstream.tuning import default_storage, shown_storage, study_name
from cyto_ssrl.errors import CytoError
from cyto_ssrl.names import budget_label

MIN_TRIALS_FOR_IMPORTANCE = 2  # Optuna's importance evaluator needs at least two completed trials


def run_tune(
    model_uri: str,
    mode: str = "linear",
    budget: float = 1,
    n_trials: int = 10,
    storage: str | None = None,
    preset_name: str = "tiny",
    manifest: str | None = None,
    seed: int = 0,
    **overrides,
) -> tuple[str, float]:
    """Tune blr on resample 0 of `budget`; returns (parent run id, best blr). Reruns add trials to the study."""
    one_of("mode for tune (it trains a classifier)", mode, TRAINED_MODES)
    at_least("n_trials", n_trials, 1)
    return tune_setup(prepare(model_uri, preset_name, manifest, seed, **overrides), mode, budget, n_trials, storage)


def tune_setup(
    setup: Setup, mode: str, budget: float, n_trials: int, storage: str | None = None, run_id: str | None = None
) -> tuple[str, float]:
    """run_tune on a prepared setup (a study cell reuses its worker's)."""
    seed = setup.cfg.seed
    train, val = draw_budget(setup.downstream, budget, 0, seed)
    storage = storage or default_storage()
    tracking.refuse_password(storage, "the Optuna storage")
    name = study_name(setup.version, mode, budget)
    settings = setup.cfg.training(mode)
    # No pruning while the lr still warms up: every trial is slow then.
    pruner = optuna.pruners.MedianPruner(n_warmup_steps=int(settings.warmup_epochs))
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", pruner=pruner, load_if_exists=True
    )
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))  # a rerun does not repeat its trials
    # tune_mode and tune_budget, not mode and budget: a search for downstream results by params.mode and
    # params.budget must not find tuning runs.
    params = {
        "model_uri": setup.model_uri,
        "tune_mode": mode,
        "tune_budget": budget_label(budget),
        "n_trials": n_trials,
        "preset": setup.preset_name,
        "seed": seed,
        "blr_low": settings.blr_search[0],
        "blr_high": settings.blr_search[1],
        "n_train": len(train),
        "n_val": len(val),
        **setup.ratio_params,
    }
    tags = {**setup.tags, "study_name": name, "optuna_storage": shown_storage(storage)}
    run_name = names.tune_run(setup.label, mode, budget)
    with tracking.stage_run("tune", params, tags, run_name=run_name, run_id=run_id) as parent:
        _log_inputs(setup, train, val, budget)
        objective = _objective(setup, mode, budget, train, val, tags, run_name)
        # A diverging lr (non-finite loss, CytoError) fails its trial and its run; the search goes on.
        study.optimize(objective, n_trials=n_trials, catch=(CytoError,))
        completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not completed:
            raise CytoError(f"no trial of study {name!r} completed (all pruned or failed)")
        _log_study(study, len(completed))
    return parent.info.run_id, float(study.best_params["blr"])


def _log_inputs(setup: Setup, train, val, budget: float) -> None:
    """Lineage the UI shows: the backbone searched for, and the budget draw (resample 0) it trains on."""
    setup.log_lineage()
    draw = f"b{budget_label(budget)}-r0"
    tracking.log_dataset(train, setup.manifest, name=f"train-{draw}", context="train")
    tracking.log_dataset(val, setup.manifest, name=f"val-{draw}", context="validation")


def _objective(setup: Setup, mode: str, budget: float, train, val, tags: dict, run_name: str):
    settings = setup.cfg.training(mode)
    run_seed = budget_seed(setup.cfg.seed, budget, 0)

    def objective(trial: optuna.Trial) -> float:
        blr = trial.suggest_float("blr", *settings.blr_search, log=True)
        loop = budget_loop(settings, budget, len(train), blr, None, run_seed, setup.cfg.num_workers)
        params = {
            "model_uri": setup.model_uri,
            "tune_mode": mode,
            "tune_budget": budget_label(budget),
            "trial": trial.number,
            "blr": blr,
            "lr": loop.lr,
            "batch_size": loop.batch_size,
            "epochs": loop.epochs,
            **setup.ratio_params,
        }

        def report(epoch: int, metrics: dict[str, float]) -> None:
            tracking.log_metrics(metrics, step=epoch)
            trial.report(metrics[VAL_ACC], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        pruned = False
        trial_tags = {**tags, "trial": trial.number}
        with tracking.stage_run("tune", params, trial_tags, run_name=f"{run_name}/trial-{trial.number}"):
            _log_inputs(setup, train, val, budget)
            try:
                _, best = train_on_split(setup, mode, train, val, loop, report)
                tracking.log_metrics({"train/best_val_acc": best.val_acc, "train/best_epoch": best.epoch})
            except optuna.TrialPruned:
                # A pruned trial is a finished run that stopped early, not a failure.
                tracking.set_tags({"pruned": "true"})
                pruned = True
        if pruned:
            raise optuna.TrialPruned()
        return best.val_acc

    return objective


def _log_study(study: optuna.Study, n_completed: int) -> None:
    best = study.best_params["blr"]
    tracking.log_metrics({"tune/best_blr": best, "tune/best_val_acc": study.best_value})
    tracking.set_tags({"best_blr": best, "best_trial": study.best_trial.number})
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        trials = study.trials_dataframe()
        tracking.log_table(trials, Path(tmp) / "trials.csv")
        tracking.log_ui_table(trials.astype(str), "trials.json")
        _log_axes(optuna.visualization.matplotlib.plot_optimization_history(study), Path(tmp) / "history.png")
        if n_completed >= MIN_TRIALS_FOR_IMPORTANCE:
            _log_axes(optuna.visualization.matplotlib.plot_param_importances(study), Path(tmp) / "importance.png")
        else:
            tracking.set_tags({"importance": f"not plotted: {n_completed} completed trial(s), needs 2"})


def _log_axes(axes, path: Path) -> None:
    tracking.log_figure(axes.figure, path)
    plt.close(axes.figure)  # Optuna draws through pyplot, which keeps every figure open otherwise
