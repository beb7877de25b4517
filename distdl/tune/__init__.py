"""Hyperparameter sweeps on Ray Tune: every trial is a distdl training run (train.run).

    settings.py the spec's ``tune:`` section (TuneSpec)
    search.py   ``--search`` strings and the section, validated before Ray starts
    plan.py     concurrent trials x workers per trial, fitted to the cluster
    run.py      the Tune run: one trainable that calls train.run, restore after a killed driver
    results.py  the table, tune.json and the best trial's checkpoint
"""
