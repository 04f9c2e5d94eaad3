"""mlflow run . -e downstream: linear probe, fine-tuning or representation analyses of a registered backbone."""

from dataclasses import dataclass

from cyto_ssrl.cli import REQUIRED, main, param, parse_params
from cyto_ssrl.downstream.budgets import parse_budgets
from cyto_ssrl.errors import CytoError
from cyto_ssrl.stages.downstream import MODES, run_downstream


@dataclass
class Params:
    model_uri: str = param(REQUIRED, "models:/<name>/<version> or models:/<name>@<alias>")
    mode: str = param("linear", " | ".join(MODES))
    budgets: str = param("100,50,10,5,1", "label budgets, % of the downstream partition")
    resamples: int = param(5, "budget draws per budget")
    preset: str = param("tiny", "tiny | paper")
    lr: str = param("preset", "an absolute lr, 'tuned' (the best blr of a tune study), or 'preset' (its blr)", True)
    manifest: str = param("lineage", "tile manifest or tiles run id; 'lineage': the model's own", True)
    seed: int = param(0)


def parse_lr(text: str | None) -> float | str | None:
    """None (the preset's blr), 'tuned' (the best blr of a finished tune search), or a number: that absolute lr."""
    if text in (None, "tuned"):
        return text
    try:
        return float(text)
    except ValueError:
        raise CytoError(f"lr {text!r} is neither a number nor 'tuned'") from None


def run() -> None:
    p = parse_params(Params, __doc__)
    run_id = run_downstream(
        p.model_uri, p.mode, parse_budgets(p.budgets), p.resamples, p.preset, parse_lr(p.lr), p.manifest, p.seed
    )
    print(f"downstream run {run_id}: {p.mode} of {p.model_uri}")


if __name__ == "__main__":
    main(run)
