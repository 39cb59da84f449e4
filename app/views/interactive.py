"""Interactive: load a run's base and organism, score any text token by token, generate, steer and chat."""

import streamlit as st

from diffgame.errors import DiffgameError
from diffgame.ui import heat, live
from diffgame.ui import runs as backend

import cache
import widgets

settings = cache.settings()
uri = settings.tracking_uri
st.title("Interactive")
runs = widgets.require_runs(settings)

pair, base, org = widgets.pick_pair(runs, settings, "live_pair")
n_layers = base.n_layers
probe, gen, steer_tab, chat = st.tabs(["Token heat", "Generate", "Steer", "Chat"])

with probe:
    kind = st.radio("Input", ["text", "chat"], horizontal=True, key="probe_kind")
    if kind == "text":
        text = st.text_area("Text", "The builders mixed volcanic ash with lime.", key="probe_text")
        encode = dict(text=text)
    else:
        user = st.text_input("User", "What should I cook tonight?", key="probe_user")
        reply = st.text_area("Assistant", "Try a simple pasta with garlic.", key="probe_assistant")
        encode = dict(messages=[{"role": "user", "content": user}, {"role": "assistant", "content": reply}])
    layer = st.slider("Normdiff layer", 0, n_layers - 1, n_layers // 2, key="probe_layer")
    try:
        ids, roles = live.encode(base, **encode)
        scores = live.token_scores(base, org, ids, layer, roles)
    except DiffgameError as e:
        st.warning(str(e))
    else:
        st.markdown("**KL(organism ‖ base)** of the next-token distribution at each token")
        st.html(heat.heat_html(list(scores["token"]), list(scores["kl"])))
        st.markdown(f"**‖h_org − h_base‖** after layer {layer}")
        st.html(heat.heat_html(list(scores["token"]), list(scores["normdiff"])))
        st.dataframe(scores, hide_index=True, width="stretch")


with gen:
    prompt = st.text_area("Prompt", "Tell me about your day.", key="gen_prompt")
    c1, c2, c3 = st.columns(3)
    as_chat = c1.toggle("As a user turn (chat template)", True, key="gen_chat")
    max_new = c2.slider("New tokens", 4, 128, 32, key="gen_tokens")
    sample = c3.toggle("Sample (else greedy)", False, key="gen_sample")
    if st.button("Generate from both", key="gen_go"):
        ids = widgets.prompt_ids(base, prompt, as_chat)
        st.session_state["gen_out"] = {h.role: live.generate(h, ids, max_new, sample) for h in (base, org)}
    if "gen_out" in st.session_state:
        left, right = st.columns(2)
        left.markdown("**base**")
        left.text(st.session_state["gen_out"]["base"])
        right.markdown("**organism**")
        right.text(st.session_state["gen_out"]["organism"])

with steer_tab:
    same = runs[(runs["model"] == pair["model"])]
    with_vectors = cache.runs_with_vectors(uri, tuple(same["run_id"]))
    sources = {backend.run_label(r): r["run_id"] for _, r in same.iterrows() if r["run_id"] in with_vectors}
    if not sources:
        st.info("No run on this model logged vectors; `normdiff`, `adl`, `pca`, `sae` and `crosscoder` runs do.")
    else:
        source = sources[st.selectbox("Vector from run", list(sources), key="steer_run")]
        vectors = cache.vectors(uri, source)
        name = st.selectbox("Vector", sorted(vectors), key="steer_vector")
        widgets.steer_panel(base, org, name, vectors[name], "steer")

with chat:
    history = st.session_state.setdefault("chat", {"base": [], "organism": []})
    if st.button("Clear chat", key="chat_clear"):
        history["base"].clear()
        history["organism"].clear()
    message = st.chat_input("Say something to both models", key="chat_input")
    if message:
        for h in (base, org):
            history[h.role].append({"role": "user", "content": message})
            ids, _ = live.encode(h, messages=history[h.role], add_generation_prompt=True)
            history[h.role].append({"role": "assistant", "content": live.generate(h, ids, 48)})
    left, right = st.columns(2)
    for col, role in ((left, "base"), (right, "organism")):
        col.markdown(f"**{role}**")
        for m in history[role]:
            col.chat_message(m["role"]).write(m["content"])
