"""The stages of the study, each as one tracked MLflow run: the pure work lives in its package (`data/`, `methods/`
with `pretrain.py`, `downstream/`, `analysis/`), and each module here has the one function that runs it as a run.

    tiles.run_tiles -> pools.run_pools -> pretrain.run_pretrain -> downstream.run_downstream (tune.run_tune)
"""
