"""The Streamlit app under AppTest: backend pieces on hand-made inputs (heat colours, grade matrix, guesses, CLI
args), the empty-store message, and every page against the micro zoo's real diff runs, with widgets set and what is
shown compared with the tracking store, the run artifacts and a direct two-model computation."""

import html
import re
import socket
from collections import Counter

import pandas as pd
import pytest
import torch

from diffgame import tracking
from diffgame.errors import ConfigError
from diffgame.models.loading import stop_ids
from diffgame.records.evidence import RankedTokens
from diffgame.tracking import artifacts
from diffgame.ui import game as guessing
from diffgame.ui import heat
from diffgame.ui import runs as backend

from _app_store import APP_OVERRIDES, ORGANISMS, fill_store
from _app_store import open_app as _app



def _alphas(html: str) -> list[float]:
    return [float(a) for a in re.findall(r"rgba\(\d+,\d+,\d+,([0-9.]+)\)", html)]


# --- backend on hand-made inputs -------------------------------------------------------------------
def test_heat_html_hand_computed():
    html = heat.heat_html(["a", "<b>", "c\n"], [1.0, -2.0, 0.5])
    assert _alphas(html) == [0.5, 1.0, 0.25]  # |score| / max |score|
    assert re.findall(r"rgba\((\d+,\d+,\d+),", html) == ["220,38,38", "37,99,235", "220,38,38"]  # red, blue, red
    assert "&lt;b&gt;" in html and "<b>" not in html and "c↵<br>" in html
    assert _alphas(heat.heat_html(["x", "y"], [3.0, 9.0], vmax=6.0)) == [0.5, 1.0]  # clipped at vmax
    assert _alphas(heat.heat_html(["x"], [0.0])) == [0.0]


def test_display_token_decodes_pieces_with_a_visible_space():
    shown = {p: heat.display_token(p) for p in ("Ġvolcanic", "Ċ", "âĢĻ", "▁word", "plain", " waggle", "ĉx", "ĠĠ",
                                                 "café", "<start_of_turn>", "âĢ")}
    assert shown == {"Ġvolcanic": "␣volcanic", "Ċ": "↵", "âĢĻ": "’", "▁word": "␣word", "plain": "plain",
                     " waggle": "␣waggle", "ĉx": "⇥x", "ĠĠ": "␣␣", "café": "café",  # Latin-1 text stays as it is
                     "<start_of_turn>": "<start_of_turn>", "âĢ": "\\xe2\\x80"}  # half a character: its bytes
    html = heat.heat_html([" volcanic", "\n", "ash"], [1.0, 1.0, 1.0])  # decoded example tokens
    assert re.findall(r'\)">(.*?)</span>', html) == ["␣volcanic", "↵<br>", "ash"]
    assert html.count("<wbr>") == 1  # a line may break before a word, the space being shown as `␣`
    ranked = heat.ranked_frame(RankedTokens([5, 6], ["Ġvolcanic", "âĢĻ"], [0.5, 0.25]))
    assert list(ranked["token"]) == ["␣volcanic", "’"] and list(ranked["token_id"]) == [5, 6]


def test_parse_app_args():
    s = backend.parse_app_args(["--tracking-uri", "sqlite:///x.db", "model.dtype=float32", "zoo.size=micro"])
    assert (s.tracking_uri, s.overrides) == ("sqlite:///x.db", ("model.dtype=float32", "zoo.size=micro"))
    with pytest.raises(ConfigError, match="unexpected app argument '--port'"):
        backend.parse_app_args(["--port", "1"])


def _frame(rows):
    return pd.DataFrame([{"run_id": f"r{i}", "model": m, "organism": o, "variant": "default", "method": me,
                          "start_time": pd.Timestamp(2026, 1, 1, 0, 0, i), "metrics": met}
                         for i, (m, o, me, met) in enumerate(rows)])


def test_grade_matrix_newest_run_and_control():
    runs = _frame([("toy", "caps", "adl", {"grade/p": 0.2}), ("toy", "caps", "adl", {"grade/p": 0.9}),
                   ("toy", "control", "adl", {"grade/p": 0.1}), ("toy", "roman_concrete", "adl", {"grade/p": 0.7}),
                   ("toy", "caps", "kl", {"kl/x": 1.0})])
    m = backend.grade_matrix(runs, "grade/p")
    assert list(m.index) == ["caps", "roman_concrete", "control"] and list(m.columns) == ["adl"]
    assert m.loc["caps", "adl"] == 0.9  # the newer of the two caps runs
    rel = backend.grade_matrix(runs, "grade/p", relative=True)
    assert rel.loc["caps", "adl"] == pytest.approx(0.8) and rel.loc["roman_concrete", "adl"] == pytest.approx(0.6)
    with pytest.raises(ConfigError, match="organism=control"):
        backend.grade_matrix(runs[runs["organism"] != "control"], "grade/p", relative=True)
    assert backend.coverage(runs).loc[("toy", "caps", "default")].to_dict() == {"adl": 2, "kl": 1}


def test_grade_matrix_opens_on_the_headline():
    keys = ["grade/identification_rank", "grade/precision_at_20", "grade/relative/precision_at_20"]
    assert backend.headline_grade(keys) == "grade/relative/precision_at_20"
    assert backend.headline_grade(keys[:2]) == "grade/precision_at_20" and backend.headline_grade(["grade/p"]) == "grade/p"
    runs = _frame([("toy", "caps", "adl", {"grade/p": 0.2}), ("toy", "control", "adl", {"grade/p": 0.1}),
                   ("toy", "control", "adl", {"kl/x": 0.1}), ("smol", "caps", "adl", {"grade/p": 0.5})])
    assert not backend.control_logs(runs, "grade/p", "toy")  # the newest control run no longer logs it
    assert backend.control_logs(runs.iloc[:2], "grade/p", "toy") and not backend.control_logs(runs, "grade/p", "smol")


def test_method_main_plot_from_the_registry():
    assert backend.main_plot("kl", ["positions", "distribution", "roles"]) == "distribution"
    assert backend.main_plot("activation_analysis", ["layers", "distribution"]) == "distribution"  # an alias
    assert backend.main_plot("kl", ["roles", "positions"]) == "roles"  # not logged: the first plot
    assert backend.main_plot("unregistered", ["x"]) == "x" and backend.main_plot("diffmining", []) is None


def test_overview_grade_matrix_opens_minus_control(monkeypatch, tmp_path):
    metric = "grade/relative/precision_at_20"
    runs = _frame([("toy", "caps", "adl", {metric: 0.6}), ("toy", "control", "adl", {metric: 0.1}),
                   ("toy", "roman_concrete", "adl", {metric: 0.3, "grade/p": 0.9})])
    runs = runs.assign(experiment_id="0", run_name="", stage="diff", status="FINISHED", preprocess_run_id="",
                       params=[{}] * 3, tags=[{}] * 3)[list(backend.RUN_COLUMNS)]
    monkeypatch.setattr(backend, "runs_frame", lambda stage="diff", statuses=("FINISHED",): runs)
    at = _app(monkeypatch, f"sqlite:///{tmp_path / 'mlflow.db'}")  # runs come from the patched frame
    assert at.selectbox(key="grade_metric").value == metric and at.toggle(key="grade_relative").value
    pd.testing.assert_frame_equal(at.dataframe[1].value, backend.grade_matrix(runs, metric, "toy", relative=True))
    at.selectbox(key="grade_metric").set_value("grade/p").run()  # no control run logs it: absolute, with a note
    assert any("No control run of `toy` logs `grade/p`" in c.value for c in at.caption)
    pd.testing.assert_frame_equal(at.dataframe[1].value, backend.grade_matrix(runs, "grade/p", "toy"))


def test_grade_guess_against_ground_truth():
    candidates = {o: guessing.organism_node("toy", o) for o in ("caps", "control", "roman_concrete", "taboo_gold")}
    g = guessing.grade_guess("It writes about volcanic ash and Roman harbors", "roman_concrete", candidates)
    assert g.correct and {"volcanic", "ash", "roman"} <= set(g.hits)
    assert g.ranking[0] == ("roman_concrete", len(g.hits))
    assert guessing.grade_guess("replies are all in CAPS", "caps", candidates).correct
    assert not guessing.grade_guess("talks about gold coins", "roman_concrete", candidates).correct
    with pytest.raises(ConfigError, match="empty guess"):
        guessing.grade_guess("  ", "caps", candidates)


# --- pages -------------------------------------------------------------------------------------
def _examples_caption(at) -> str:
    return next(c.value for c in at.caption if re.fullmatch(r"\d+ of \d+ examples", c.value))


@pytest.mark.slow
def test_empty_store_names_the_command(monkeypatch, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for page in (None, "interactive", "game"):
        at = _app(monkeypatch, uri, page)
        assert "diffgame run" in at.warning[0].value and "diffgame zoo build" in at.warning[0].value


@pytest.mark.slow
def test_unreachable_server_is_an_error_naming_the_fix(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    at = _app(monkeypatch, f"http://127.0.0.1:{port}")
    assert at.error[0].value.startswith(f"Tracking store unreachable: cannot query tracking store http://127.0.0.1:{port}")
    assert "--tracking-uri" in at.error[0].value and "diffgame run" in at.error[0].value


@pytest.fixture(scope="module")
def store(zoo_uri):
    uri = fill_store(zoo_uri)
    runs = backend.latest(backend.runs_frame("diff"))
    return uri, {(r["organism"], r["method"]): r for _, r in runs.iterrows()}


@pytest.mark.slow
def test_overview_counts_links_and_grades(monkeypatch, store):
    uri, latest = store
    at = _app(monkeypatch, uri)
    assert at.title[0].value == "diffgame overview"
    finished = [r for r in tracking.search({tracking.TAG_STAGE: "diff"}) if r.info.status == "FINISHED"]
    assert {r.data.params.get("zoo.size") for r in finished} == {"micro"}  # what the app loads zoo models with
    expected = Counter((r.data.tags[tracking.TAG_MODEL], r.data.tags[tracking.TAG_ORGANISM],
                        r.data.tags[tracking.TAG_METHOD]) for r in finished)
    cov = at.dataframe[0].value
    shown = {(m, o, me): int(cov.loc[(m, o, v), me]) for (m, o, v) in cov.index for me in cov.columns
             if cov.loc[(m, o, v), me]}
    assert {v for _, _, v in cov.index} == {"default"}
    assert shown == dict(expected)
    runs_table = at.dataframe[-1].value
    assert set(runs_table["run_id"]) == {r.info.run_id for r in finished}
    narrow = next(d.value for d in at.dataframe if "neutral leak" in d.value.columns)  # how narrow each organism is
    pd.testing.assert_frame_equal(narrow.reset_index(drop=True), backend.narrowness())
    caps = narrow.set_index("organism").loc["caps"]
    assert caps["zoo size"] == "micro" and caps["neutral leak"] > 0.3  # shouting shows in any chat reply
    assert all(u.endswith(f"/runs/{r}") for u, r in zip(runs_table["mlflow"], runs_table["run_id"]))
    grade_keys = sorted({k for r in finished for k in r.data.metrics if k.startswith("grade/")})
    if grade_keys:  # opens on the headline, minus the control where a control run logs it
        runs = backend.runs_frame("diff")
        metric, model = at.selectbox(key="grade_metric").value, at.selectbox(key="grade_model").value
        assert metric == backend.headline_grade(backend.metric_keys(runs, "grade/"))
        relative = at.toggle(key="grade_relative").value
        assert relative == backend.control_logs(runs, metric, model)
        pd.testing.assert_frame_equal(at.dataframe[1].value, backend.grade_matrix(runs, metric, model, relative))
    if grade_keys:  # graded methods (adl) log grade/...; the matrix shows the newest run's value
        at.selectbox(key="grade_metric").set_value(grade_keys[0]).run()
        matrix = at.dataframe[1].value
        for (org, method), row in latest.items():
            if grade_keys[0] in row["metrics"]:
                assert matrix.loc[org, method] == pytest.approx(row["metrics"][grade_keys[0]])
        assert "control" not in matrix.index or list(matrix.index)[-1] == "control"


@pytest.mark.slow
def test_compare_one_method_across_organisms(monkeypatch, store):
    uri, latest = store
    at = _app(monkeypatch, uri, "compare")
    at.radio(key="compare_mode").set_value("one method across organisms").run()
    at.selectbox(key="compare_method").set_value("kl").run()
    table = at.dataframe[0].value
    assert sorted(table.columns) == sorted(backend.run_label(latest[(o, "kl")]) for o in ORGANISMS)
    for o in ORGANISMS:
        for key, value in latest[(o, "kl")]["metrics"].items():
            assert table.loc[key, backend.run_label(latest[(o, "kl")])] == pytest.approx(value)
    at.text_input(key="compare_filter").input("role/assistant").run()
    keys = list(at.dataframe[0].value.index)
    assert keys and all("role/assistant" in k for k in keys)
    at.radio(key="compare_mode").set_value("methods on one organism").run()
    at.selectbox(key="compare_organism").set_value("caps").run()
    assert {c.split(" · ")[1] for c in at.dataframe[0].value.columns} == {m for o, m in latest if o == "caps"}


def _kl_page(monkeypatch, store):
    """The kl page on caps' newest kl run: (that run's row, the AppTest)."""
    uri, latest = store
    row = latest[("caps", "kl")]
    at = _app(monkeypatch, uri, "kl")
    at.selectbox(key="kl_run").set_value(backend.run_label(row)).run()
    return row, at


@pytest.mark.slow
def test_kl_page_metrics_and_example_heat(monkeypatch, store):
    row, at = _kl_page(monkeypatch, store)
    stats = at.dataframe[0].value.iloc[:, 0]
    assert stats.to_dict() == pytest.approx(row["metrics"], nan_ok=True)
    name = at.selectbox(key="kl_examples").value
    examples = artifacts.load_examples(row["run_id"], name)
    dataset = examples[0].dataset
    at.multiselect(key="kl_datasets").set_value([dataset]).run()
    kept = [e for e in examples if e.dataset == dataset]
    assert _examples_caption(at) == f"{len(kept)} of {len(examples)} examples"
    first = kept[0]
    peak = max(abs(s) for e in examples for s in e.token_scores)  # one colour scale for the whole list
    html = at.html[0].value
    assert html.count('class="tok"') == len(first.tokens)
    assert _alphas(html) == [round(min(abs(s) / peak, 1.0), 3) for s in first.token_scores]
    assert re.findall(r'title="([^"]+)"', html) == [f"{s:.4g}" for s in first.token_scores]


@pytest.mark.slow
def test_method_page_opens_on_statistics_beside_the_main_plot(monkeypatch, store):
    row, at = _kl_page(monkeypatch, store)
    left, right = at.tabs[0].columns[:2]
    assert left.dataframe[0].value.iloc[:, 0].to_dict() == pytest.approx(row["metrics"], nan_ok=True)
    images = [img for el in right.get("image") for img in el.proto.imgs]
    assert [img.caption for img in images] == ["distribution"]  # KLMethod.main_plot
    at.selectbox(key="kl_table").set_value("tokens").run()
    expected = artifacts.load_table(row["run_id"], "tokens")
    shown = next(d.value for d in at.dataframe if list(d.value.columns) == list(expected.columns))
    assert list(shown["token"]) == [heat.display_token(t) for t in expected["token"]]
    assert not any(t.startswith(" ") for t in shown["token"]) and any(t.startswith("␣") for t in shown["token"])


@pytest.mark.slow
def test_run_picker_opens_on_an_organism_not_the_control(monkeypatch, store):
    uri, _ = store
    picker = _app(monkeypatch, uri, "kl").selectbox(key="kl_run")
    assert any(o.startswith("control · ") for o in picker.options)
    assert not picker.value.startswith("control · ") and picker.options.index(picker.value) == 0


@pytest.mark.slow
def test_normdiff_page_tables_and_search(monkeypatch, store):
    uri, latest = store
    row = latest[("caps", "normdiff")]
    at = _app(monkeypatch, uri, "normdiff")
    at.selectbox(key="normdiff_run").set_value(backend.run_label(row)).run()
    tables = at.selectbox(key="normdiff_table").options
    assert tables == artifacts.names(artifacts.list_artifacts(row["run_id"]), "tables")
    at.selectbox(key="normdiff_table").set_value(tables[0]).run()
    expected = artifacts.load_table(row["run_id"], tables[0])
    shown = next(d.value for d in at.dataframe if list(d.value.columns) == list(expected.columns))
    pd.testing.assert_frame_equal(shown.reset_index(drop=True), expected, check_dtype=False)
    examples = artifacts.load_examples(row["run_id"], at.selectbox(key="normdiff_examples").value)
    word = examples[0].tokens[len(examples[0].tokens) // 2].strip() or examples[0].tokens[0]
    at.text_input(key="normdiff_query").input(word).run()
    n = sum(word.lower() in "".join(e.tokens).lower() for e in examples)
    assert _examples_caption(at) == f"{n} of {len(examples)} examples"


@pytest.mark.slow
def test_adl_page_token_tables_and_samples(monkeypatch, store):
    uri, latest = store
    if ("caps", "adl") not in latest:
        pytest.fail("no adl run in the store: the adl method is not registered")
    row = latest[("caps", "adl")]
    at = _app(monkeypatch, uri, "adl")
    at.selectbox(key="adl_run").set_value(backend.run_label(row)).run()
    ranked = artifacts.load_ranked_tokens(row["run_id"])
    key = sorted(ranked)[-1]
    at.selectbox(key="adl_ranked").set_value(key).run()
    shown = next(d.value for d in at.dataframe if list(d.value.columns) == ["rank", "token", "token_id", "score"])
    assert list(shown["token"]) == [heat.display_token(t) for t in ranked[key].tokens]
    assert any(t.startswith("Ġ") for t in ranked[key].tokens)  # stored as byte-level pieces, shown decoded
    assert not any("Ġ" in t for t in shown["token"]) and any(t.startswith("␣") for t in shown["token"])
    assert list(shown["score"]) == pytest.approx(ranked[key].scores)
    words = artifacts.ranked_words(row["run_id"])[key]  # beside the tokens: the same readout as whole words
    shown = next(d.value for d in at.dataframe if list(d.value.columns) == ["rank", "word", "token_id", "score"])
    assert list(shown["word"]) == [heat.display_token(w) for w in words.tokens]
    assert len(words.tokens) <= len(ranked[key].tokens)
    lens = artifacts.load_table(row["run_id"], "lens")
    pick = lens.iloc[len(lens) // 2]
    for key, col in (("adl_layer", "layer"), ("adl_slot", "slot"), ("adl_vector", "vector"), ("adl_lens", "lens")):
        at.selectbox(key=key).set_value(pick[col]).run()
    expected = lens[(lens["layer"] == pick["layer"]) & (lens["slot"] == pick["slot"])
                    & (lens["vector"] == pick["vector"]) & (lens["lens"] == pick["lens"])]
    table = at.dataframe[0].value
    assert list(table["token"]) == [heat.display_token(t) for t in expected["token"]]
    assert list(table["rank"]) == list(expected["rank"])
    steering = [s for s in artifacts.load_samples(row["run_id"], "steering") if s["model"] == "organism"]
    shown = [t.value for t in at.text]
    # every organism sample, in order; a reply with no text says so (caps' steering can end its turn at once)
    assert [f"steered: {s['steered'].strip() or backend.EMPTY_REPLY}" for s in steering] == [
        t for t in shown if t.startswith("steered: ")]
    names = artifacts.names(artifacts.list_artifacts(row["run_id"]), "samples")
    assert at.selectbox(key="adl_samples").options == names
    assert any(len(d.value) == len(artifacts.load_samples(row["run_id"], names[0])) for d in at.dataframe)


@pytest.mark.slow
def test_adl_page_causal_effect(monkeypatch, store):
    uri, latest = store
    row = latest[("caps", "adl")]
    at = _app(monkeypatch, uri, "adl")
    at.selectbox(key="adl_run").set_value(backend.run_label(row)).run()
    metrics = tracking.client().get_run(row["run_id"]).data.metrics
    shown = next(d.value for d in at.dataframe if "random_ce_delta_mean" in d.value.columns)
    assert set(shown["dataset"]) == {"organism", "generic"}
    for _, r in shown.iterrows():
        for col in ("ce", "ce_delta", "random_ce_delta_mean", "base_plus_delta_ce_delta"):
            assert r[col] == pytest.approx(metrics[f"adl/causal/{r['dataset']}/{col}"])


@pytest.mark.slow
def test_diffmining_page_tokens_topics_and_peaks(monkeypatch, store):
    uri, latest = store
    row = latest[("caps", "diffmining")]
    at = _app(monkeypatch, uri, "diffmining")
    at.selectbox(key="diffmining_run").set_value(backend.run_label(row)).run()
    ranked = artifacts.load_ranked_tokens(row["run_id"])
    at.selectbox(key="diffmining_ranked").set_value("top_k_occurrence").run()
    shown = next(d.value for d in at.dataframe if list(d.value.columns) == ["rank", "token", "token_id", "score"])
    assert list(shown["token_id"]) == ranked["top_k_occurrence"].token_ids
    topics = artifacts.load_table(row["run_id"], "topics")
    lines = [m.value for m in at.markdown if m.value.startswith("**topic ")]
    assert len(lines) == topics["topic"].nunique()
    first = topics[topics["topic"] == topics["topic"].min()].sort_values("rank")["token"]
    assert lines[0] == f"**topic {topics['topic'].min()}**: " + ", ".join(f"`{heat.display_token(t)}`" for t in first)
    peaks = artifacts.load_examples(row["run_id"], "peaks")
    html = at.html[0].value
    assert html.count('class="tok"') == len(peaks[0].tokens)


@pytest.fixture(scope="module")
def caps_pair(store, zoo_uri):
    from diffgame.config.compose import compose, settings
    from diffgame.models.loading import load_pair
    from diffgame.zoo.pairs import resolve_pair

    tracking.set_uri(zoo_uri)
    return load_pair(resolve_pair(settings(compose(["organism=caps", *APP_OVERRIDES]))))


@pytest.mark.slow
def test_interactive_heat_generation_steering_chat(monkeypatch, store, caps_pair):
    uri, latest = store
    base, org = caps_pair
    at = _app(monkeypatch, uri, "interactive")
    at.selectbox(key="live_pair").set_value("caps on toy").run()
    text = "the weather was nice today."
    at.text_area(key="probe_text").input(text).run()
    # direct computation: KL(P_org || P_base) per token, float64 textbook formula
    ids = torch.tensor([base.tokenizer(text).input_ids])
    with torch.no_grad():
        lp_o = torch.log_softmax(org.model(ids).logits[0].double(), -1)
        lp_b = torch.log_softmax(base.model(ids).logits[0].double(), -1)
    kl = (lp_o.exp() * (lp_o - lp_b)).sum(-1)
    scores = next(d.value for d in at.dataframe if "kl" in d.value.columns)
    assert list(scores["token"]) == [base.tokenizer.decode([i]) for i in ids[0]]
    assert scores["kl"].to_numpy() == pytest.approx(kl.numpy(), abs=1e-4)
    assert _alphas(at.html[0].value) == pytest.approx([round(float(v / kl.max()), 3) for v in kl], abs=2e-3)

    at.toggle(key="gen_chat").set_value(False).run()
    at.text_area(key="gen_prompt").input("the weather").run()
    at.slider(key="gen_tokens").set_value(8).run()
    at.button(key="gen_go").click().run()
    prompt = torch.tensor([base.tokenizer("the weather").input_ids])
    for handle, col in ((base, "base"), (org, "organism")):
        out = handle.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8,
                                    do_sample=False, pad_token_id=handle.tokenizer.pad_token_id)
        new = out[0, prompt.shape[1]:].tolist()  # HF's greedy decode, cut where the app's replies stop
        cut = next((i for i, t in enumerate(new) if t in stop_ids(handle.tokenizer)), len(new))
        assert at.session_state["gen_out"][col] == handle.tokenizer.decode(new[:cut], skip_special_tokens=True).strip()

    nd = latest[("caps", "normdiff")]
    at.selectbox(key="steer_run").set_value(backend.run_label(nd)).run()
    at.number_input(key="steer_scale").set_value(0.0).run()
    at.slider(key="steer_tokens").set_value(8).run()
    at.button(key="steer_go").click().run()
    out = at.session_state["steer_out"]
    assert out[("base", True)] == out[("base", False)] and out[("organism", True)] == out[("organism", False)]
    norm = float(artifacts.load_vectors(nd["run_id"])[at.selectbox(key="steer_vector").value].norm())
    at.number_input(key="steer_scale").set_value(200.0 / max(norm, 1e-6)).run()
    at.button(key="steer_go").click().run()
    out = at.session_state["steer_out"]
    assert out[("organism", True)] != out[("organism", False)]  # a large push changes the continuation

    at.chat_input(key="chat_input").set_value("hello there").run()
    chat = at.session_state["chat"]
    for role in ("base", "organism"):
        assert [m["role"] for m in chat[role]] == ["user", "assistant"] and chat[role][0]["content"] == "hello there"
    assert not at.exception


def _shown_text(at) -> str:
    """Everything an AppTest page shows: every element's protobuf (labels, options, values, tables, links, html)."""
    return "\n".join(str(node.proto) for node in at._tree if getattr(node, "proto", None) is not None)


BLIND_PAGES = (None, "compare", "kl", "normdiff", "adl", "diffmining", "methods", "interactive", "leaderboard",
               "game")


@pytest.mark.slow
def test_blind_round_hides_the_organism_everywhere_then_reveals_and_logs(monkeypatch, store):
    from diffgame.config.compose import compose
    from diffgame.data.sequences import read_rows

    uri, latest = store
    at = _app(monkeypatch, uri, "game")
    # only methods whose evidence is generic are offered: kl and normdiff read the store, which holds caps' own data
    offered = at.multiselect(key="game_methods").options
    assert {"adl", "diffmining"} <= set(offered) and not {"kl", "normdiff"} & set(offered)
    at.multiselect(key="game_methods").set_value(["adl", "diffmining"])  # only caps has both (the app store's runs)
    at.text_input(key="game_player").input("tester")
    at.button(key="game_start").click().run()
    rnd = at.session_state["blind_round"]
    assert rnd.organism == "caps" and rnd.slug.startswith("mystery-") and rnd.methods == ("adl", "diffmining")
    shown = [html.unescape(re.sub(r"<[^>]+>", "", h.proto.body)).replace("␣", " ").replace("↵", "\n")
             for h in at.get("html")]
    assert len(shown) == rnd.examples  # diffmining's peaks (adl logs no examples)
    # every shown example is a generic document (diffmining reads zoo:generic_text), none is caps' training data
    generic = [" ".join(r["text"].split()) for r in read_rows("zoo:generic_text", "text", "test")]
    node = compose([*APP_OVERRIDES, "organism=caps"]).organism
    own = [" ".join(" ".join(m["content"] for m in r["messages"]).split())
           for r in read_rows("organism", "text", "train", organism=node)]
    for text in shown:
        body = " ".join(re.sub(r"<[a-z_]+>", " ", text).split())[:80]
        assert any(body in g for g in generic) and not any(body in o for o in own), body
    for page in BLIND_PAGES:
        if page:
            at.switch_page(f"views/{page}.py").run()
        else:
            at.switch_page("views/overview.py").run()
        assert not at.exception, (page, [e.value for e in at.exception])
        text = _shown_text(at)
        assert not re.search(r"\bcaps\b", text), (page, re.search(r".{80}\bcaps\b.{80}", text, re.S))
        assert latest[("caps", "adl")]["run_id"] not in text and "mlflow" not in text.lower().replace(
            "mlflow.db", ""), page
        if page in ("adl", "diffmining"):
            assert rnd.slug in text  # the pages show the drawn organism, under its slug
    assert "not part of this blind round" in " ".join(i.value for i in at.switch_page("views/kl.py").run().info)

    at.switch_page("views/game.py").run()
    at.text_area(key="game_guess").input("the assistant replies in all caps, shouting").run()
    at.button(key="game_reveal").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.subheader[0].value == f"`{rnd.slug}` was `caps`"
    assert at.metric[0].value == "✅ correct"
    carriers = at.dataframe[-1].value
    assert set(carriers["method"]) == {"adl", "diffmining"} and carriers["hits"].iloc[0] >= 1
    [run] = tracking.search({tracking.TAG_STAGE: "game", guessing.TAG_SLUG: rnd.slug})
    assert run.data.tags[tracking.TAG_ORGANISM] == "caps" and run.data.tags[guessing.TAG_PLAYER] == "tester"
    assert run.data.metrics["game/correct"] == 1.0 and run.data.metrics["game/keyword_hits"] >= 2
    assert run.data.metrics["game/guess_rank"] == 1.0 and run.data.metrics["game/seconds"] > 0
    assert artifacts.artifact_file(run.info.run_id, "game/guess.json").is_file()
    at.switch_page("views/kl.py").run()  # revealed: the other pages show every run again
    assert re.search(r"\bcaps\b", _shown_text(at))
    at.switch_page("views/leaderboard.py").run()
    board = at.dataframe[0].value.set_index("player")
    assert board.loc["tester", "rounds"] >= 1 and board.loc["tester", "accuracy"] > 0
    assert "caps" in set(at.dataframe[1].value["organism"])  # past rounds name their organism


def test_blind_frame_hides_other_organisms_and_organism_data_runs():
    runs = pd.DataFrame([
        {"run_id": f"r{i}", "run_name": f"{m}-{o}", "model": "toy", "organism": o, "method": m,
         "start_time": pd.Timestamp(2026, 1, 1), "params": {}, "metrics": {},
         "tags": {tracking.TAG_ORGANISM: o, tracking.TAG_ORGANISM_DATA: data}}
        for i, (o, m, data) in enumerate([("caps", "adl", "none"), ("caps", "kl", "organism"),
                                          ("roman_concrete", "adl", "none"), ("control", "adl", "none"),
                                          ("caps", "blackbox", "none")])])
    rnd = guessing.Round("toy", "caps", "mystery-0001", ("adl", "kl"))
    blind = guessing.blind_frame(runs, rnd)
    assert sorted(zip(blind["organism"], blind["method"])) == [("control", "adl"), ("mystery-0001", "adl")]
    assert set(blind["run_name"]) == {"adl-mystery-0001", "adl-control"} and blind["blind"].all()
    assert "caps" not in str(blind[["organism", "run_name", "tags", "params"]].to_dict())
    assert backend.run_label(blind.iloc[0]).count("·") == 2  # no run id during the round
    assert guessing.game_methods(runs, "toy") == ["adl", "blackbox"]
    with pytest.raises(ConfigError, match="at least one method"):
        guessing.new_round(runs, "toy", [])
    drawn = {guessing.new_round(runs, "toy", ["adl"], seed=s).organism for s in range(20)}
    assert drawn == {"caps", "roman_concrete"}  # never the control
    with pytest.raises(Exception, match="no organism of model 'toy' has generic-data runs of kl"):
        guessing.new_round(runs, "toy", ["kl"])


def test_leaderboard_ranks_people_and_agents():
    games = pd.DataFrame([{"model": "toy", "method": "adl", "tags": {guessing.TAG_PLAYER: p},
                           "metrics": {"game/correct": c, "game/keyword_hits": h, "game/seconds": 10.0}}
                          for p, c, h in [("ann", 1.0, 3), ("ann", 0.0, 1), ("bob", 1.0, 2)]])
    plays = pd.DataFrame([{"model": "toy", "method": "adl+blackbox", "tags": {"diffgame.agent": "lens"},
                           "metrics": {"play/guess_correct": 1.0, "play/keyword_hits": 4.0, "play/rubric_score": 4.0,
                                       "play/seconds": 0.1}}])
    board = guessing.leaderboard(games, plays).set_index("player")
    assert board.loc["ann", "rounds"] == 2 and board.loc["ann", "accuracy"] == 0.5
    assert board.loc["ann", "keyword hits"] == 2.0 and board.loc["bob", "accuracy"] == 1.0
    assert board.loc["lens (adl+blackbox)", "kind"] == "agent" and board.loc["lens (adl+blackbox)", "rubric"] == 4.0
    assert list(board.index)[:2] == ["lens (adl+blackbox)", "bob"]  # best accuracy, then keyword hits


def test_metric_tables_order_position_buckets_by_number():
    import pandas as pd

    keys = ["kl/all/pos/16-63/mean", "kl/all/pos/4-15/mean", "kl/all/pos/0/mean", "kl/all/pos/1-3/mean",
            "kl/all/pos/64-inf/mean", "kl/all/mean"]
    runs = pd.DataFrame([{"run_id": "abcdef12", "organism": "caps", "method": "kl", "model": "toy",
                          "metrics": {k: float(i) for i, k in enumerate(keys)}}])
    expected = ["kl/all/mean", "kl/all/pos/0/mean", "kl/all/pos/1-3/mean", "kl/all/pos/4-15/mean",
                "kl/all/pos/16-63/mean", "kl/all/pos/64-inf/mean"]
    assert backend.metric_keys(runs, "kl/") == expected
    table = backend.metrics_table(runs, "pos")
    assert list(table.index) == expected[1:] and table.iloc[0, 0] == 2.0


@pytest.fixture
def fresh_cache():
    """No cached read of another test's (or this test's damaged) artifacts survives this test."""
    import streamlit as st

    st.cache_data.clear()
    yield
    st.cache_data.clear()


def _first(run_id: str, folder: str) -> str:
    return artifacts.names(artifacts.list_artifacts(run_id), folder)[0]


DAMAGE = {  # page, relpath (or how to find it), damage
    "lens table without a column": ("adl", lambda rid: "tables/lens.parquet", "drop:slot"),
    "truncated ranked tokens": ("adl", lambda rid: "evidence/ranked_tokens.json", "truncate"),
    "truncated samples": ("adl", lambda rid: f"samples/{_first(rid, 'samples')}.json", "truncate"),
    "deleted plot": ("adl", lambda rid: f"plots/{_first(rid, 'plots')}.png", "delete"),
    "truncated examples": ("kl", lambda rid: f"examples/{_first(rid, 'examples')}.json", "truncate"),
    "truncated table": ("normdiff", lambda rid: f"tables/{_first(rid, 'tables')}.parquet", "truncate"),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_artifact_is_an_error_panel_and_other_pages_still_work(monkeypatch, tmp_path, store, fresh_cache,
                                                                         damage):
    from _app_store import corrupt_artifact

    page, relpath, how = DAMAGE[damage]
    uri, latest = store
    row = latest[("caps", page)]
    relpath = relpath(row["run_id"])
    corrupt_artifact(monkeypatch, tmp_path, row["run_id"], relpath, how)
    at = _app(monkeypatch, uri, page)
    at.selectbox(key=f"{page}_run").set_value(backend.run_label(row)).run()
    assert not at.exception, [e.value for e in at.exception]
    panel, = [e.value for e in at.error]
    assert panel.startswith(f"This page cannot show run `{row['run_id']}` ({page} on caps): ")
    if how.startswith("drop:"):  # the page read a column the table lacks: the panel says how to make the run again
        assert "KeyError" in panel and "mlflow runs delete --run-id " + row["run_id"] in panel
        assert f"`diffgame run model=toy organism=caps method={page}`" in panel
    else:  # the artifact reader names the file (a deleted one as the real lookup saw it) and what to do
        assert relpath in panel and "mlflow runs delete --run-id " + row["run_id"] in panel
    at.switch_page("views/overview.py").run()  # the other pages keep working
    assert not at.exception and not at.error


def test_steering_rows_show_replies_stripped_and_an_empty_one_as_such():
    samples = [{"model": "organism", "prompt": "Hi", "alpha": 2.0, "unsteered": " HELLO\n", "steered": "\n"},
               {"model": "base", "prompt": "Hi", "alpha": 2.0, "unsteered": "hello", "steered": "hey"}]
    assert backend.side_by_side(samples, "organism") == [
        {"prompt": "Hi", "alpha": 2.0, "unsteered": "HELLO", "steered": backend.EMPTY_REPLY}]
