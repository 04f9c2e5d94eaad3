"""Executors' bad input, each a one-line error before anything is submitted, and the pure pieces of the engines:
what SLURM's node lists and GRES say, which cells share a job array, where a multi-node training's nodes meet."""

from __future__ import annotations

import dataclasses

import pytest

from cyto_ssrl import machines
from cyto_ssrl.errors import CytoError
from cyto_ssrl.study.executors.base import Resources, resources
from cyto_ssrl.study.executors.ray_cluster import RayExecutor
from cyto_ssrl.study.executors.slurm import SlurmExecutor, array_of, gres_gpus, slurm_settings
from cyto_ssrl.study.launch import run_study
from cyto_ssrl.study.plan import plan

from ..helpers import free_port, micro


def test_an_unknown_executor_is_refused_by_name(store, manifest):
    with pytest.raises(CytoError, match="unknown executor 'kubernetes'; choose one of local|slurm|ray"):
        run_study(micro(manifest, executor="kubernetes"), "bad")


def test_engines_need_a_tracking_server_and_local_runs_one_cell_at_a_time(store, manifest):
    with pytest.raises(CytoError, match="executor=slurm runs cells in other processes.*tracking server"):
        run_study(micro(manifest, executor="slurm"), "bad")
    with pytest.raises(CytoError, match="workers=2 runs cells at once on an engine"):
        run_study(micro(manifest), "bad", workers=2)


def test_slurm_without_sbatch_on_path_is_refused(manifest, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    executor = SlurmExecutor(micro(manifest, executor="slurm"), tmp_path / "slurm", None)
    with pytest.raises(CytoError, match="needs SLURM's sbatch on PATH"):
        executor.check([Resources()])


def test_an_unknown_field_of_the_slurm_block_is_named():
    assert slurm_settings({"partition": "gpu", "setup": ["module load cuda"]}).setup == ("module load cuda",)
    with pytest.raises(CytoError, match=r"unknown field\(s\) \['partiton'\] in the study's slurm block"):
        slurm_settings({"partiton": "gpu"})


def test_a_ray_address_that_does_not_answer_is_refused_at_once(manifest):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    executor = RayExecutor(micro(manifest, executor="ray", ray_address=address), None)
    with pytest.raises(CytoError, match=f"the Ray cluster at {address} does not answer"):
        executor.check([Resources()])


def test_gpus_in_slurm_gres_strings():
    assert [gres_gpus(g) for g in ("(null)", "gpu:4", "gpu:a100:8(S:0-1)", "gpu:a100:2,gpu:v100:2")] == [0, 4, 8, 4]


def test_resources_follow_the_stage_and_resamplings_share_an_array(manifest):
    cfg = micro(manifest, num_processes=4, slurm={"nodes": 2}, gpus=True)
    cells = {cell.stage: cell for cell in plan(cfg)}
    assert resources(cells["pretrain"], cfg) == Resources(cpus=2, gpus=2, nodes=2)
    assert resources(cells["downstream"], cfg) == Resources(gpus=1)
    assert resources(cells["pools"], cfg) == Resources() == resources(cells["analysis"], cfg)
    assert resources(cells["downstream"], dataclasses.replace(cfg, gpus=False)) == Resources()
    key = "downstream/pretrain/mae/1:1/s0/linear/b50"
    assert array_of(f"{key}/r0") == array_of(f"{key}/r4") == key and array_of("pools/1:1/s0") == "pools/1:1/s0"


def test_the_nodes_of_a_multi_node_slurm_job_meet_at_the_first_node():
    env = {"SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "4321"}
    where = machines.from_environment(env)
    assert where == machines.Machines(count=2, rank=1, main_address="gpu07", port=24321) and where.follower
    assert machines.from_environment({"SLURM_JOB_NUM_NODES": "1"}) == machines.Machines()
