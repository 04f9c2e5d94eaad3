"""The catalogue of bad input: every input an entry point refuses, run through the entry point's command line in
this process. Each case asserts exit status 2, one line `error: ...` that names the problem (no traceback unless
--debug), and nothing half-written: no new FINISHED run, no new registered version, no new file (manifest, tiles,
pool, feature cache, checkpoint) beside the store. The README's "When a command refuses" lists these messages."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from safetensors.torch import save_file

from cyto_ssrl import cli
from cyto_ssrl.errors import CytoError
from cyto_ssrl.methods.mae import MAE

from .data.helpers import _field, _slides_folder, linked
from .data.test_bad_slides import _geojson
from .helpers import MODEL, ROOT, free_port, local_env_path, mlflow_run

SVS = "slides/CMU-1-Small-Region.svs"
STORE_FILES = ("mlruns.db", "mlartifacts", "optuna.db")  # the store's own files: a FAILED run may log into them


def nan_forward(self, views):
    return self.backbone(views[0]).sum() * float("nan")


class Inputs:
    """What a case's command line refers to, made in the test's folder when the case asks for it."""

    def __init__(self, tmp_path: Path, request, monkeypatch):
        self.tmp = tmp_path
        self.request = request
        self.monkeypatch = monkeypatch

    def slides(self, files: dict) -> str:
        """A folder of slides and annotations: name -> image, bytes or text."""
        return str(_slides_folder(self.tmp, files))

    def field_with(self, cells) -> str:
        return self.slides({"a.png": _field(), "a.geojson": _geojson(cells)})

    def truncated_slide(self) -> str:
        data = (self.request.getfixturevalue("shared_data") / SVS).read_bytes()
        return self.slides({"cmu.svs": data[: len(data) // 3]})

    def cells(self, layout: dict[str, int]) -> str:
        """A cell-crop folder in Herlev's layout: class folder -> that many of its real crops (linked)."""
        herlev = self.request.getfixturevalue("shared_data") / "herlev" / "train"
        crops = [path for name, n in layout.items() for path in sorted((herlev / name).glob("*.BMP"))[:n]]
        return str(linked(crops, self.tmp / "cells", keep_parent=True))

    def empty(self) -> str:
        (self.tmp / "empty").mkdir()
        return str(self.tmp / "empty")

    def odd_cells(self) -> str:
        (self.tmp / "odd" / "im_Weird").mkdir(parents=True)
        _field().save(self.tmp / "odd" / "im_Weird" / "001_01.bmp")
        return str(self.tmp / "odd")

    def shared(self, name: str):
        """A session fixture (made in its own store the first time)."""
        return self.request.getfixturevalue(name)

    def cohort(self) -> str:
        """The small synthetic cohort's manifest (tiled once per session)."""
        return str(self.shared("small_cohort"))

    def manifest(self, keep: Callable[[pd.DataFrame], pd.Series]) -> str:
        """A copy of the cohort's manifest with only the rows `keep` selects."""
        tiles = pd.read_parquet(self.cohort())
        tiles[keep(tiles)].to_parquet(self.tmp / "changed.parquet")
        return str(self.tmp / "changed.parquet")

    def model(self) -> str:
        """The registered tiny MAE backbone, copied into this test's store."""
        return self.shared("model")

    def without_ratio(self) -> str:
        uri = self.model()
        MlflowClient().delete_model_version_tag(MODEL, "1", "ratio")
        return uri

    def corrupt_cache(self) -> str:
        uri = self.model()
        cache = self.tmp / "outputs" / "features" / f"{MODEL}_v1_downstream_eval_transform_64px.pt"
        cache.parent.mkdir(parents=True)
        cache.write_bytes(b"not a torch file")
        return uri

    def weights(self) -> str:
        """A weights file that fits no backbone of the presets."""
        import torch

        save_file({"head.weight": torch.zeros(3, 3)}, self.tmp / "other.safetensors")
        return str(self.tmp / "other.safetensors")

    def beside_model(self, uri: str) -> str:
        """`uri`, in a store that holds the registered backbone (so only the name, version or alias is wrong)."""
        self.model()
        return uri

    def nan_pool(self) -> str:
        """A pool of the cohort, on which MAE's loss becomes NaN at the first step (as a far too high lr makes it)."""
        from cyto_ssrl.stages.pools import run_pools

        pool = run_pools(self.cohort(), pool_size=32, output_dir=str(self.tmp / "pools"))[1]
        self.monkeypatch.setattr(MAE, "forward", nan_forward)
        return str(pool)

    def failed_pretraining(self) -> str:
        """The id of a pre-training run that failed before its first checkpoint."""
        from cyto_ssrl.stages.pretrain import run_pretrain

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(MAE, "forward", nan_forward)
            with pytest.raises(CytoError):
                run_pretrain("mae", manifest=self.cohort(), pool_size=32, epochs=1, batch_size=16, num_workers=0)
        return mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'pretrain'")["run_id"][0]

    def study_json(self, text: str) -> str:
        (self.tmp / "my_study.json").write_text(text)
        return str(self.tmp / "my_study.json")

    def earlier_study(self) -> str:
        """Study 'mine' started once with pools of 100,000 tiles (its pool cells fail: the cohort is smaller)."""
        from cyto_ssrl.study.launch import run_study
        from cyto_ssrl.study.presets import StudyConfig

        cfg = StudyConfig(manifest=self.cohort(), ratios=("1:1",), methods=("mae",), pool_size=100_000, external="")
        with pytest.raises(CytoError, match="cell"):
            run_study(cfg, "mine")
        return self.study_json(json.dumps({"manifest": self.cohort(), "ratios": ["1:1"], "external": ""}))


FAST = ["--epochs", "1", "--batch-size", "16"]  # pre-training settings that would take seconds, were they accepted


@dataclass
class Case:
    """`entry` refuses `argv(inputs)` with a message that contains `message`."""

    id: str
    entry: str
    argv: Callable[[Inputs], list[str]]
    message: str
    env: dict[str, str] = field(default_factory=dict)


def case(entry: str, id: str, argv, message: str, **env) -> Case:
    return Case(id, entry, argv if callable(argv) else lambda _: argv, message, env)


def unreachable() -> str:
    return f"http://127.0.0.1:{free_port()}"


CASES = [
    # --- tiles ------------------------------------------------------------------------------------------------------
    case(
        "tiles",
        "not-a-slide",
        lambda i: ["--source", "slides", "--input", i.slides({"a.svs": "text"})],
        "a.svs is not a slide",
    ),
    case(
        "tiles",
        "truncated-slide",
        lambda i: ["--source", "slides", "--input", i.truncated_slide(), "--strict", "true"],
        "cmu.svs is not a slide",
    ),
    case(
        "tiles",
        "no-mpp",
        lambda i: ["--source", "slides", "--input", i.slides({"a.png": _field()})],
        "slide 'a' has no um/px",
    ),
    case(
        "tiles",
        "mpp-not-a-number",
        lambda i: ["--source", "slides", "--input", i.slides({"a.png": _field()}), "--mpp", "fine"],
        "mpp 'fine' is not a number",
    ),
    case(
        "tiles",
        "cell-outside-slide",
        lambda i: ["--source", "slides", "--input", i.field_with([(500, 10, "positive")]), "--mpp", "1"],
        "outside the slide",
    ),
    case(
        "tiles",
        "unknown-cell-class",
        lambda i: ["--source", "slides", "--input", i.field_with([(10, 10, "tumour")]), "--mpp", "1"],
        "unknown cell class 'tumour'",
    ),
    case(
        "tiles",
        "geojson-not-json",
        lambda i: [
            "--source",
            "slides",
            "--input",
            i.slides({"a.png": _field(), "a.geojson": "{broken"}),
            "--mpp",
            "1",
        ],
        "a.geojson is not valid GeoJSON",
    ),
    case(
        "tiles",
        "duplicate-slide-ids",
        lambda i: ["--source", "slides", "--input", i.slides({"a.png": _field(), "sub/a.png": _field()}), "--mpp", "1"],
        "duplicate slide id 'a'",
    ),
    case("tiles", "empty-cell-folder", lambda i: ["--source", "cells", "--input", i.empty()], "no cell images"),
    case(
        "tiles",
        "unknown-cell-folder",
        lambda i: ["--source", "cells", "--input", i.odd_cells()],
        "unknown cell class 'im_Weird'",
    ),
    case(
        "tiles",
        "split-cannot-be-met",
        lambda i: ["--source", "cells", "--input", i.cells({"normal_columnar": 2, "carcinoma_in_situ": 4})],
        "split cannot be met",
    ),
    case("tiles", "unknown-partition", ["--partitions", "ssrl=0.5,eval=0.5"], "partition 'eval' is not one of"),
    case("tiles", "balance-ssrl", ["--balance", "ssrl"], "the ssrl partition cannot be balanced"),
    case("tiles", "unknown-source", ["--source", "scans"], "unknown tile source 'scans'"),
    case(
        "tiles",
        "missing-input",
        lambda i: ["--source", "slides", "--input", str(i.tmp / "nope")],
        "nope does not exist",
    ),
    case("tiles", "unknown-preset", ["--preset", "huge"], "unknown preset 'huge'"),
    case("tiles", "csv-size-malformed", ["--csv-image-size", "big"], "image size 'big' is not WIDTHxHEIGHT"),
    case("tiles", "seed-not-a-number", ["--seed", "x"], "argument --seed: 'x' is not a whole number"),
    # --- pools ------------------------------------------------------------------------------------------------------
    case(
        "pools",
        "ratio-slash",
        lambda i: ["--manifest", i.cohort(), "--ratio", "1/100"],
        "ratio '1/100' is not written 1:r",
    ),
    case("pools", "ratio-zero", lambda i: ["--manifest", i.cohort(), "--ratio", "0:5"], "ratio '0:5'"),
    case("pools", "ratio-negative", lambda i: ["--manifest", i.cohort(), "--ratio", "1:-3"], "ratio '1:-3'"),
    case(
        "pools",
        "pool-larger-than-partition",
        lambda i: ["--manifest", i.cohort(), "--pool-size", "100000"],
        "positive and 50000 negative ssrl tiles; the manifest has",
    ),
    case(
        "pools",
        "no-ssrl-tiles",
        lambda i: ["--manifest", i.manifest(lambda t: t["partition"] != "ssrl")],
        "no tiles in the 'ssrl' partition",
    ),
    case(
        "pools",
        "missing-manifest",
        lambda i: ["--manifest", str(i.tmp / "nope.parquet does not exist")],
        "nope.parquet does not exist",
    ),
    case(
        "pools",
        "unreachable-server",
        lambda i: ["--manifest", i.cohort()],
        "is unreachable",
        MLFLOW_TRACKING_URI=unreachable(),
    ),
    # --- pretrain ---------------------------------------------------------------------------------------------------
    case("pretrain", "unknown-method", ["--method", "byol"], "unknown method 'byol'"),
    case("pretrain", "unknown-backbone", ["--backbone", "vgg99"], "unknown backbone 'vgg99'"),
    case("pretrain", "unknown-preset", ["--preset", "huge"], "unknown preset 'huge'"),
    case("pretrain", "mask-ratio-one", ["--mask-ratio", "1"], "mask_ratio"),
    case("pretrain", "mask-ratio-zero", ["--mask-ratio", "0"], "mask_ratio"),
    case("pretrain", "nan-loss", lambda i: ["--pool", i.nan_pool(), *FAST], "loss is nan"),
    case("pretrain", "resume-unknown-run", ["--resume", "0" * 32], "no MLflow run with id"),
    case(
        "pretrain",
        "resume-without-checkpoint",
        lambda i: ["--resume", i.failed_pretraining()],
        "nothing to resume: no checkpoint",
    ),
    case("pretrain", "init-missing", lambda i: ["--init", str(i.tmp / "imagenet.safetensors")], "do not exist"),
    case("pretrain", "init-other-backbone", lambda i: ["--init", i.weights()], "does not fit backbone vit_tiny"),
    # --- downstream -------------------------------------------------------------------------------------------------
    case(
        "downstream",
        "unknown-model-name",
        lambda i: ["--model-uri", i.beside_model("models:/nope/1")],
        "no registered model named 'nope'",
    ),
    case(
        "downstream",
        "unknown-version",
        lambda i: ["--model-uri", i.model().rpartition("/")[0] + "/99"],
        f"'{MODEL}' has no version 99",
    ),
    case(
        "downstream",
        "unknown-alias",
        lambda i: ["--model-uri", i.beside_model(f"models:/{MODEL}@r999")],
        f"'{MODEL}' has no alias 'r999'",
    ),
    case("downstream", "not-a-model-uri", ["--model-uri", "backbone.pt"], "is not a registered model"),
    case(
        "downstream",
        "version-without-ratio",
        lambda i: ["--model-uri", i.without_ratio(), "--budgets", "10"],
        "has no ratio tag",
    ),
    case("downstream", "budget-above-100", lambda i: ["--model-uri", i.model(), "--budgets", "150"], "not in (0, 100]"),
    case("downstream", "budget-zero", lambda i: ["--model-uri", i.model(), "--budgets", "0"], "not in (0, 100]"),
    case(
        "downstream", "budget-malformed", lambda i: ["--model-uri", i.model(), "--budgets", "10;5"], "comma-separated"
    ),
    case("downstream", "budget-infeasible", lambda i: ["--model-uri", i.model(), "--budgets", "100"], "positive and"),
    case(
        "downstream",
        "one-class-evaluation",
        lambda i: [
            "--model-uri",
            i.model(),
            "--budgets",
            "10",
            "--manifest",
            i.manifest(lambda t: (t["partition"] != "evaluation") | (t["label"] == "negative")),
        ],
        "holds negative tiles only",
    ),
    case("downstream", "unknown-mode", lambda i: ["--model-uri", i.model(), "--mode", "knn"], "unknown mode 'knn'"),
    case(
        "downstream",
        "lr-malformed",
        lambda i: ["--model-uri", i.model(), "--lr", "fast"],
        "lr 'fast' is neither a number nor 'tuned'",
    ),
    case(
        "downstream",
        "lr-tuned-without-search",
        lambda i: ["--model-uri", i.model(), "--budgets", "10", "--lr", "tuned"],
        "no tuning study",
    ),
    case(
        "downstream",
        "corrupt-feature-cache",
        lambda i: ["--model-uri", i.corrupt_cache(), "--budgets", "10", "--resamples", "1"],
        "feature cache",
    ),
    # --- tune -------------------------------------------------------------------------------------------------------
    case(
        "tune",
        "representation-mode",
        lambda i: ["--model-uri", i.model(), "--mode", "representation"],
        "unknown mode for tune",
    ),
    case("tune", "no-trials", lambda i: ["--model-uri", i.model(), "--n-trials", "0"], "n_trials must be at least 1"),
    case(
        "tune",
        "unknown-alias",
        lambda i: ["--model-uri", i.beside_model(f"models:/{MODEL}@r999")],
        "has no alias 'r999'",
    ),
    case("tune", "budget-zero", lambda i: ["--model-uri", i.model(), "--budget", "0"], "not in (0, 100]"),
    # --- study ------------------------------------------------------------------------------------------------------
    case("study", "unknown-preset", ["--preset", "huge"], "unknown study preset 'huge'"),
    case(
        "study",
        "json-unknown-field",
        lambda i: ["--preset", i.study_json('{"ratio": ["1:1"]}')],
        "my_study.json: unknown setting(s) ['ratio']",
    ),
    case(
        "study",
        "json-not-json",
        lambda i: ["--preset", i.study_json('{"ratios": ["1:1"]')],
        "my_study.json is not JSON",
    ),
    case("study", "json-not-an-object", lambda i: ["--preset", i.study_json('["1:1"]')], "my_study.json"),
    case(
        "study",
        "reused-id-other-settings",
        lambda i: ["--preset", i.earlier_study(), "--study", "mine"],
        "pool_size was '100000', now '200'",
    ),
    case("study", "unknown-method", ["--methods", "mae,byol"], "unknown method 'byol'"),
    case("study", "ratio-malformed", ["--ratios", "1:1,1-10"], "ratio '1-10' is not written 1:r"),
    case("study", "budget-outside", ["--budgets", "50,150"], "not in (0, 100]"),
    case("study", "id-with-quote", ["--study", "it's"], "may hold only letters"),
    case("study", "workers-without-engine", ["--workers", "2"], "workers=2 runs cells at once on an engine"),
    case("study", "unreachable-server", [], "is unreachable", MLFLOW_TRACKING_URI=unreachable()),
    # --- analyze ----------------------------------------------------------------------------------------------------
    case("analyze", "no-such-study", ["--study", "nope"], "no finished downstream runs for study nope"),
    case("analyze", "unknown-metric", ["--metrics", "acc,speed"], "unknown metric speed"),
    # --- server -----------------------------------------------------------------------------------------------------
    case(
        "server",
        "password-in-store-uri",
        ["--backend-store-uri", "postgresql://lab:s3cret@127.0.0.1/mlflow"],
        "--backend-store-uri holds a password",
    ),
    case("server", "unknown-permission", ["--default-permission", "ALL"], "invalid choice: 'ALL'"),
]


def snapshot(folder: Path) -> set[Path]:
    """Every file under `folder` except the tracking store's."""
    return {p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).parts[0] not in STORE_FILES}


def statuses() -> dict[str, str]:
    runs = mlflow.search_runs(search_all_experiments=True)
    return {} if runs.empty else dict(zip(runs["run_id"], runs["status"]))


def versions() -> int:
    return len(MlflowClient().search_model_versions())


def refuse(entry: str, argv: list[str], capsys, monkeypatch) -> str:
    """Run `python -m entrypoints.<entry> ARGV` here; assert exit 2 and a one-line error; return the message."""
    module = importlib.import_module(f"entrypoints.{entry}")
    monkeypatch.setattr(sys, "argv", [entry, *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(module.run)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2, err
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    return errors[0].removeprefix("error: ")


@pytest.mark.parametrize("case", CASES, ids=[f"{c.entry}-{c.id}" for c in CASES])
def test_bad_input_is_refused_in_one_line_and_leaves_nothing(case, store, tmp_path, request, capsys, monkeypatch):
    argv = case.argv(Inputs(tmp_path, request, monkeypatch))
    files, runs, registered = snapshot(tmp_path), statuses(), versions()
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    message = refuse(case.entry, argv, capsys, monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    mlflow.set_tracking_uri(store)
    assert case.message in message
    touched = {status for run_id, status in statuses().items() if runs.get(run_id) != status}
    assert touched <= {"FAILED"}, "a refused command left a run FINISHED or RUNNING"
    assert versions() == registered, "a refused command registered a model version"
    left = snapshot(tmp_path) - files
    # A failed pre-training keeps its job file, which `resume` reads; never a checkpoint.
    assert not {p for p in left if p.name != "job.json"}, f"left behind: {sorted(map(str, left))}"


def test_the_catalogue_covers_every_entry_point():
    entries = {path.stem for path in (ROOT / "entrypoints").glob("*.py")} - {"__init__"}
    assert {c.entry for c in CASES} == entries and len(CASES) >= 30


@pytest.mark.parametrize("flag, env", [(["--debug"], {}), ([], {"CYTO_SSRL_DEBUG": "1"})], ids=["flag", "env"])
def test_debug_raises_the_error_with_its_traceback(store, capsys, monkeypatch, flag, env):
    from entrypoints import pools

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "argv", ["pools", "--ratio", "1/100", *flag])
    with pytest.raises(CytoError, match="ratio '1/100' is not written 1:r") as raised:
        cli.main(pools.run)
    assert raised.traceback  # Python prints it: where the error was raised
    assert "error:" not in capsys.readouterr().err


@pytest.mark.slow
def test_mlflow_run_refuses_in_one_line_and_fails_its_run(store, tmp_path):
    """End to end: `mlflow run . -e pools` with a malformed ratio fails its run and says why in one line."""
    env = {**os.environ, "PATH": local_env_path()}
    done = subprocess.run(mlflow_run("pools", "ratio=1:-3"), capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("error: ")] == [
        "error: ratio '1:-3' is not written 1:r (positive:negative), e.g. 1:100"
    ], done.stderr[-2000:]
    runs = mlflow.search_runs(search_all_experiments=True)
    assert list(runs["status"]) == ["FAILED"] and not (tmp_path / "outputs").exists()
