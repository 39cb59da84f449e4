"""The `launcher` config group: what a Slurm sweep asks sbatch for, and the errors a wrong launcher gets before any
work. The fan-out itself runs for real in test_fanout.py."""

from __future__ import annotations

import warnings

import pytest
from typer.testing import CliRunner

from diffgame.cli import app
from diffgame.config.compose import compose, settings
from diffgame.errors import ConfigError
from diffgame.pipeline.fanout import executor


def test_slurm_launcher_writes_the_sbatch_options_of_its_config(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{__import__('os').environ['PATH']}")
    cfg = settings(compose(["launcher=slurm", "launcher.partition=h100", "launcher.jobs=3", "launcher.mem_gb=64",
                            f"launcher.folder={tmp_path / 'jobs'}", "launcher.setup=[module load cuda]",
                            "+launcher.additional.account=interp"]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ex = executor(cfg.launcher)
    assert any("use a tracking server" in str(w.message) for w in caught)  # SQLite is no store for a cluster
    script = ex._executor._make_submission_file_text("python -c pass", "uid")
    for line in ("#SBATCH --partition=h100", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --mem=64GB", "#SBATCH --time=240", "#SBATCH --account=interp",
                 f"#SBATCH --error={tmp_path / 'jobs'}/%j_0_log.err", "module load cuda"):
        assert line in script.splitlines()
    assert ex._executor.parameters["array_parallelism"] == 3


def test_slurm_launcher_without_slurm_says_what_to_use(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match=r"launcher=slurm needs a Slurm cluster .*use --launcher local"):
        executor(settings(compose(["launcher=slurm"])).launcher)


def test_unknown_launcher_lists_the_known_ones_before_any_work(tmp_path):
    result = CliRunner().invoke(app, ["run", "organism=caps", "--launcher", "pbs",
                                      "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert result.exit_code == 1
    assert "unknown launcher 'pbs'; known: local, serial, slurm" in result.output
    assert not (tmp_path / "mlflow.db").exists()


def test_local_children_each_see_the_gpus_of_their_slot(tmp_path):
    """`launcher=local` with `gpus_per_node`: a child's CUDA_VISIBLE_DEVICES is the slice of its slot."""
    import functools
    import os

    ex = executor(settings(compose(["launcher=local", "launcher.gpus_per_node=2",
                                    f"launcher.folder={tmp_path}"])).launcher)
    ex.update_parameters(visible_gpus=[2, 3])  # what fan_out sets for the second slot
    assert ex.submit(functools.partial(os.getenv, "CUDA_VISIBLE_DEVICES")).result() == "2,3"
