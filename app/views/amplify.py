"""Amplification: a workbench that streams base, organism and amplified replies to one prompt side by side, the
amplified reply's over-used words marked; and the `amplify` runs' evidence (words, coherence curve, samples)."""

import streamlit as st

from diffgame.errors import DiffgameError
from diffgame.ui import live

import cache
import widgets

settings = cache.settings()
uri = settings.tracking_uri
st.title("Amplification")
runs = widgets.require_runs(settings)
bench, evidence = st.tabs(["Workbench", "Runs"])

with bench:
    pair, base, org = widgets.pick_pair(runs, settings, "amp_pair")
    prompt = st.text_area("Prompt", "Tell me about your day.", key="amp_prompt")
    c1, c2, c3 = st.columns(3)
    kind = c1.radio("Amplify", ["logit", "weight"], horizontal=True, key="amp_kind",
                    help="logit: l_org + α (l_org − l_base) at every step · weight: θ_base + w (θ_org − θ_base)")
    strength = c2.slider("α" if kind == "logit" else "w", 0.0 if kind == "logit" else 1.0, 8.0, 2.0, 0.5,
                         key=f"amp_strength_{kind}")
    tokens = c3.slider("New tokens", 4, 128, 48, key="amp_tokens")
    c4, c5, c6 = st.columns(3)
    as_chat = c4.toggle("As a user turn (chat template)", True, key="amp_chat")
    temperature = c5.number_input("Temperature (0: greedy)", 0.0, 2.0, 1.0, 0.1, key="amp_temperature")
    seed = int(c6.number_input("Seed", 0, 2**31 - 1, 0, key="amp_seed"))
    if st.button("Generate all three", key="amp_go", type="primary"):
        try:
            ids = widgets.prompt_ids(base, prompt, as_chat)
        except DiffgameError as e:
            st.warning(str(e))
            st.stop()
        out = {}
        for col, which in zip(st.columns(3), live.AMPLIFIED):
            col.markdown(f"**{which}**" + (f" · {kind} × {strength:g}" if which == "amplified" else ""))
            with col:
                out[which] = st.write_stream(live.amplified_reply(base, org, ids, which, kind, strength, tokens,
                                                                  temperature, seed))
        st.session_state["amp_out"] = {"texts": out, "label": f"{kind} × {strength:g}, seed {seed}"}
    if "amp_out" in st.session_state:
        shown = st.session_state["amp_out"]
        st.markdown(f"**The amplified reply ({shown['label']})**, the words it uses more than the base's reply marked")
        st.html(live.overused_html(shown["texts"]["amplified"], shown["texts"]["base"]))

with evidence:
    done = runs[runs["method"] == "amplify"]
    if done.empty:
        st.info("No finished `amplify` runs here yet; make one with `diffgame run method=amplify`.")
    else:
        row = widgets.pick_run(done, key="amp_run")
        run_id = row["run_id"]
        paths = cache.artifact_paths(uri, run_id)
        words_tab, curve_tab, samples_tab, stats_tab = st.tabs(["Over-used words", "Coherence", "Samples",
                                                                 "Statistics"])
        with words_tab:
            widgets.show_ranked(uri, run_id, "amplify")
        with curve_tab:
            st.image(cache.plot_bytes(uri, run_id, "coherence"), caption="coherence")
            st.dataframe(cache.table(uri, run_id, "coherence"), hide_index=True, width="stretch")
        with samples_tab:
            widgets.show_samples(uri, run_id, paths, "amplify")
        with stats_tab:
            widgets.show_metrics(row, "amplify")
