"""mlflow run . -e tune: Optuna search of the base lr of one backbone, mode and label budget (validation accuracy)."""

from dataclasses import dataclass

from cyto_ssrl.cli import REQUIRED, main, param, parse_params
from cyto_ssrl.downstream.config import TRAINED_MODES
from cyto_ssrl.stages.tune import run_tune


@dataclass
class Params:
    model_uri: str = param(REQUIRED, "models:/<name>/<version> or models:/<name>@<alias>")
    mode: str = param("linear", " | ".join(TRAINED_MODES))
    budget: float = param(1.0, "label budget, % of the downstream partition")
    n_trials: int = param(10, "Optuna trials")
    storage: str = param("beside-store", "Optuna RDB URL; 'beside-store': optuna.db beside the tracking store", True)
    preset: str = param("tiny", "tiny | paper")
    manifest: str = param("lineage", "tile manifest or tiles run id; 'lineage': the model's own", True)
    seed: int = param(0)


def run() -> None:
    p = parse_params(Params, __doc__)
    run_id, blr = run_tune(p.model_uri, p.mode, p.budget, p.n_trials, p.storage, p.preset, p.manifest, p.seed)
    print(f"tune run {run_id}: best blr {blr:.3g}")


if __name__ == "__main__":
    main(run)
