"""The Amplification page under AppTest against the micro zoo: the workbench's three streamed replies equal sampling
the same models directly (greedy, and seeded), w = 1 amplifies nothing, the amplified reply's over-used words are
marked; the runs tab shows an `amplify` run's coherence table; during a blind round the page shows only the slug."""

import re

import pytest
import torch

from diffgame.models.generation import sample

from _app_store import APP_OVERRIDES, fill_store, open_app

SMALL = ("method.amplify.n_prompts=8", "method.amplify.samples_per_prompt=2", "method.amplify.max_new_tokens=12",
         "method.amplify.alphas=[1.0,2.0]", "method.amplify.weights=[2.0]")


@pytest.fixture(scope="module")
def amp_store(zoo_uri):
    """The app store plus an `amplify` run on caps (and the control's, which grading makes)."""
    import streamlit as st

    from diffgame import tracking
    from diffgame.pipeline.chain import execute

    uri = fill_store(zoo_uri)
    execute([*APP_OVERRIDES, "organism=caps", "method=[amplify]", *SMALL], tracking_uri=uri)
    tracking.set_uri(uri)
    st.cache_data.clear()  # run lists an earlier AppTest cached miss the new runs
    return uri


@pytest.fixture(scope="module")
def caps_pair(amp_store):
    from diffgame.config.compose import compose, settings
    from diffgame.models.loading import load_pair
    from diffgame.zoo.pairs import resolve_pair

    return load_pair(resolve_pair(settings(compose(["organism=caps", *APP_OVERRIDES]))))


def _generate(at, kind: str, strength: float, temperature: float, seed: int = 0) -> dict:
    at.radio(key="amp_kind").set_value(kind).run()
    at.slider(key=f"amp_strength_{kind}").set_value(strength).run()
    at.number_input(key="amp_temperature").set_value(temperature).run()
    at.number_input(key="amp_seed").set_value(seed).run()
    at.button(key="amp_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return dict(at.session_state["amp_out"]["texts"])


@pytest.mark.slow
def test_workbench_replies_equal_direct_sampling(monkeypatch, amp_store, caps_pair):
    base, org = caps_pair
    at = open_app(monkeypatch, amp_store, "amplify")
    at.selectbox(key="amp_pair").set_value("caps on toy").run()
    at.text_area(key="amp_prompt").input("Tell me about the weather.").run()
    at.slider(key="amp_tokens").set_value(12).run()
    ids = [base.tokenizer.apply_chat_template([{"role": "user", "content": "Tell me about the weather."}],
                                              add_generation_prompt=True, tokenize=True, return_dict=False)]

    def direct(base_model, model, alpha=0.0, temperature=0.0, seed=0):
        return sample(base_model, model, base.tokenizer, ids, alpha, 1, 12, temperature, seed).texts[0][0]

    greedy = _generate(at, "logit", 2.0, 0.0)
    assert greedy["base"].strip() == direct(None, base.model)
    assert greedy["organism"].strip() == direct(None, org.model)
    assert greedy["amplified"].strip() == direct(base.model, org.model, 2.0)
    marked = re.findall(r"<mark>([^<]+)</mark>", at.html[-1].value)
    assert marked and all(w not in greedy["base"] for w in marked)  # the marked words are not the base's

    sampled = [_generate(at, "logit", 4.0, 1.0, seed) for seed in (7, 7, 8)]
    assert sampled[0] == sampled[1] != sampled[2]  # reproducible from the seed
    assert sampled[0]["amplified"].strip() == direct(base.model, org.model, 4.0, 1.0, 7)

    assert _generate(at, "weight", 1.0, 0.0)["amplified"] == greedy["organism"]  # w = 1 is the organism
    heavy = _generate(at, "weight", 3.0, 0.0)["amplified"]
    from diffgame.models.amplified import amplified_weights
    with amplified_weights(base.model, org.model, 3.0) as model:
        assert heavy.strip() == direct(None, model)
    assert torch.equal(next(org.model.parameters()), next(caps_pair[1].model.parameters()))

    at.selectbox(key="amp_run").set_value(at.selectbox(key="amp_run").options[0]).run()
    curve = next(d.value for d in at.dataframe if "ppl_ratio" in d.value.columns)
    assert set(curve["kind"]) == {"logit", "weight"} and len(curve) == 2 * (2 + 1)
    assert not at.exception


@pytest.mark.slow
def test_workbench_in_a_blind_round_shows_only_the_slug(monkeypatch, amp_store):
    from diffgame.ui import game as guessing

    rnd = guessing.Round(model="toy", organism="caps", slug="mystery-beef", methods=("adl",), examples=0)
    at = open_app(monkeypatch, amp_store, "amplify", session={"blind_round": rnd})
    assert at.selectbox(key="amp_pair").value == "mystery-beef on toy"
    at.button(key="amp_go").click().run()
    assert not at.exception and set(at.session_state["amp_out"]["texts"]) == {"base", "organism", "amplified"}
    shown = "\n".join(str(node.proto) for node in at._tree if getattr(node, "proto", None) is not None)
    assert not re.search(r"\bcaps\b", shown)
