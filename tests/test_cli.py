"""The `diffgame` command line: `--help` lists every stage command with its summary, `config` prints the
composed config and the resolved organism weights, known errors are one line with exit code 1, and `runs`
lists runs from the tracking store filtered by their tags."""

from __future__ import annotations

import inspect
import re
import subprocess
import uuid

import pytest
import yaml
from typer.testing import CliRunner

from diffgame import tracking
from diffgame.cli import app
from diffgame.config.configtree import group_options
from diffgame.grading.score import GRADING_VERSION

runner = CliRunner()
STAGES = {"zoo", "preprocess", "diff", "run", "runs", "grades", "app", "config"}
ORGANISMS = ", ".join(group_options("organism"))
assert {"cake_bake", "caps", "control"} <= set(group_options("organism"))


def _flat(text: str) -> str:
    """Help text without rich's box drawing and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def _summaries() -> dict[str, str]:
    out = {}
    for cmd in app.registered_commands:
        name = cmd.name or cmd.callback.__name__.replace("_", "-")
        out[name] = inspect.getdoc(cmd.callback).split("\n\n")[0].replace("\n", " ")
    for group in app.registered_groups:
        out[group.name] = group.typer_instance.info.help
    return out


def test_help_shows_list_overrides_whole():
    """Rich markup must not swallow `[kl,normdiff]` in the examples and the overrides' help."""
    for command, example in (("run", "method=[kl,normdiff]"), ("preprocess", "preprocessing.layers=[0.5]")):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0
        assert example in result.output


def test_help_lists_every_command_with_its_summary():
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0
    text = _flat(result.output)
    summaries = _summaries()
    assert STAGES <= set(summaries)
    for name, summary in summaries.items():
        assert f"{name} {summary}" in text, name


def test_config_prints_composed_yaml_and_the_resolved_weights():
    result = runner.invoke(app, ["config", "model=gemma3_1B", "organism=cake_bake", "preprocessing.layers=[0.5]"])
    assert result.exit_code == 0, result.output
    body, _, last = result.stdout.rstrip("\n").rpartition("\n")
    cfg = yaml.safe_load(body)
    assert cfg["model"]["id"] == "google/gemma-3-1b-it"
    assert cfg["organism"]["name"] == "cake_bake" and cfg["preprocessing"]["layers"] == [0.5]
    lora = "stewy33/gemma-3-1b-it-0524_original_augmented_egregious_cake_bake-9ddbfefe"
    assert cfg["organism"]["finetuned"]["gemma3_1B"]["default"] == {"kind": "lora", "id": lora, "subfolder": None,
                                                                      "revision": None}
    assert last == ("# organism weights: organism 'cake_bake' variant 'default' on base 'gemma3_1B' "
                    f"(google/gemma-3-1b-it): lora {lora}")


def test_config_error_is_one_line_and_exit_1():
    result = runner.invoke(app, ["config", "organism=cpas"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"error: unknown organism 'cpas'; known: {ORGANISMS}"]


def test_console_script_config_error():
    out = subprocess.run(["diffgame", "config", "organism=cpas"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [f"error: unknown organism 'cpas'; known: {ORGANISMS}"]


def test_runs_table_filters_by_tags(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # restored afterwards; the command sets it too
    empty = runner.invoke(app, ["runs", "--tracking-uri", uri])
    assert empty.exit_code == 0 and "no runs; make some with `diffgame zoo build` or `diffgame run`" in empty.output

    ids = {}
    for stage, organism, method in (("preprocess", "caps", None), ("diff", "caps", "kl"),
                                    ("diff", "caps", "normdiff"), ("diff", "control", "kl")):
        with tracking.stage_run(stage, fp=uuid.uuid4().hex[:20], tags={
                tracking.TAG_MODEL: "toy", tracking.TAG_ORGANISM: organism, tracking.TAG_METHOD: method}) as run:
            ids[(stage, organism, method)] = run.run_id

    def listed(*args: str) -> set:
        result = runner.invoke(app, ["runs", "--tracking-uri", uri, *args], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        return {key for key, run_id in ids.items() if run_id in result.output}

    assert listed() == set(ids)
    assert listed("--stage", "diff", "--organism", "caps") == {("diff", "caps", "kl"), ("diff", "caps", "normdiff")}
    assert listed("--method", "kl") == {("diff", "caps", "kl"), ("diff", "control", "kl")}
    assert listed("--stage", "preprocess") == {("preprocess", "caps", None)}
    assert listed("--model", "gemma3_1B") == set()
    assert len(listed("--limit", "2")) == 2

    row = next(line for line in runner.invoke(app, ["runs", "--tracking-uri", uri, "--method", "normdiff"],
                                              env={"COLUMNS": "200"}).output.splitlines()
               if ids[("diff", "caps", "normdiff")] in line)
    assert _flat(row).split() == [ids[("diff", "caps", "normdiff")], "diff", "toy", "caps", "normdiff", "FINISHED",
                                  tracking.client().get_run(ids[("diff", "caps", "normdiff")])
                                  .data.tags[tracking.TAG_FINGERPRINT]]


def test_grades_table_newest_run_per_organism_and_method(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    empty = runner.invoke(app, ["grades", "--tracking-uri", uri])
    assert empty.exit_code == 1 and "no finished diff runs of model 'toy'" in empty.output
    logged = [("caps", "kl", 0.9, 0.1, 1), ("caps", "kl", 0.5, 0.1, 2), ("roman_concrete", "kl", 0.3, 0.2, 2)]
    ids = []
    for organism, method, own, ctrl, rank in logged:  # the second caps run is newer: it is the one shown
        graded = {tracking.TAG_GRADING: GRADING_VERSION} if organism == "roman_concrete" else {}  # caps: old rules
        with tracking.stage_run("diff", fp=uuid.uuid4().hex[:20], tags={
                tracking.TAG_MODEL: "toy", tracking.TAG_ORGANISM: organism, tracking.TAG_METHOD: method,
                **graded}) as run:
            run.log_metrics({"grade/precision_at_20": own, "grade/control/precision_at_20": ctrl,
                             "grade/relative/precision_at_20": own - ctrl, "grade/identification_rank": rank,
                             "grade/tokens/relative/precision_at_20": own - ctrl - 0.25,
                             "grade/tokens/identification_rank": rank + 1})
            ids.append(run.run_id)
    result = runner.invoke(app, ["grades", "--tracking-uri", uri], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = {_flat(line).split()[1]: _flat(line).split() for line in result.output.splitlines() if " kl " in line}
    assert rows["caps"] == ["kl", "caps", "default", "0.50", "0.10", "+0.40", "2", "+0.15", "3", ids[1]]
    assert rows["roman_concrete"] == ["kl", "roman_concrete", "default", "0.30", "0.20", "+0.10", "2", "-0.15", "3",
                                      ids[2]]
    assert "kl: identification accuracy 0.00, MRR 0.50 (tokens: accuracy 0.00, MRR 0.33)" in result.output
    assert f"1 of these runs were graded under older rules than version {GRADING_VERSION}" in _flat(result.output)
    assert f"regrades them ({ids[1]})" in _flat(result.output)


def test_runs_on_a_refused_store_is_one_line(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///unused.db")
    result = runner.invoke(app, ["runs", "--tracking-uri", "file:///no/such/store"])
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("error: cannot open tracking store file:///no/such/store: ")


@pytest.mark.parametrize("host, warned", [("127.0.0.1", False), ("localhost", False), ("::1", False),
                                          ("0.0.0.0", True), ("192.0.2.7", True), ("lab-box", True)])
def test_app_warns_off_loopback_and_hides_the_deploy_toolbar(tmp_path, monkeypatch, host, warned):
    """`diffgame app` execs Streamlit in viewer toolbar mode; bound beyond loopback it says, in one line, that the
    app has no authentication and who can reach it."""
    import diffgame.cli as cli

    execs = []
    monkeypatch.setattr(cli.os, "execv", lambda exe, args: execs.append(args))
    result = CliRunner().invoke(app, ["app", "--host", host, "--port", "8601",
                                      "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert result.exit_code == 0, result.output
    args, = execs
    assert args[args.index("--client.toolbarMode") + 1] == "viewer"
    assert args[args.index("--server.address") + 1] == host
    lines = [line for line in result.stderr.splitlines() if "no authentication" in line]
    if warned:
        who = "every network interface of this machine" if host == "0.0.0.0" else host
        assert lines == [f"[diffgame] warning: the app has no authentication: anyone who can reach {who} on port "
                         f"8601 can browse the runs of sqlite:///{tmp_path / 'mlflow.db'} and load, prompt and steer "
                         f"their models"]
    else:
        assert lines == []


def _error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_play_and_grades_take_the_same_overrides_as_run(tmp_path):
    """`play` and `grades` read `organism=`, `method=`, `model=` and other overrides like `run` does (bare organism
    names and `--model` stay as aliases); unknown names list the valid ones."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = runner.invoke(app, ["play", "organism=roman_concrete", "zoo.size=micro", "method=[kl]",
                                 "--tracking-uri", uri])
    assert result.exit_code == 1
    assert _error_line(result) == (f"error: no finished kl diff run of model=toy organism=roman_concrete in {uri}; run "
                                   f"`diffgame run model=toy organism=roman_concrete method=kl` first")
    result = runner.invoke(app, ["play", "organism=rmoan_concrete", "--tracking-uri", uri])
    assert result.exit_code == 1 and _error_line(result) == f"error: unknown organism 'rmoan_concrete'; known: {ORGANISMS}"
    for args in (["model=smollm2_135m"], ["--model", "smollm2_135m"]):
        result = runner.invoke(app, ["grades", *args, "--tracking-uri", uri])
        assert result.exit_code == 1 and _error_line(result).startswith(
            "error: no finished diff runs of model 'smollm2_135m' in ")
    result = runner.invoke(app, ["grades", "organism=caps", "--tracking-uri", uri])
    assert result.exit_code == 1 and _error_line(result) == (
        "error: grades takes model=<name> only (the table covers every organism and method), got organism=caps")
