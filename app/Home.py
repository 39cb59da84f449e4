"""diffgame app entry point: a router. Sets the page config, reads the CLI settings, shows the sidebar, runs the page.

Launch: `diffgame app [--port N] [--tracking-uri URI] [OVERRIDES]`, or
`streamlit run app/Home.py -- --tracking-uri sqlite:///mlflow.db model.dtype=float32`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import cache, widgets` under AppTest too

import streamlit as st  # noqa: E402

import cache  # noqa: E402

st.set_page_config(page_title="diffgame", page_icon=":material/difference:", layout="wide")
settings = cache.settings()

pages = {
    "Runs": [st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
             st.Page("pages/compare.py", title="Compare", icon=":material/compare:")],
    "Methods": [st.Page("pages/kl.py", title="KL", icon=":material/local_fire_department:"),
                st.Page("pages/normdiff.py", title="Normdiff", icon=":material/straighten:"),
                st.Page("pages/adl.py", title="ADL", icon=":material/manage_search:")],
    "Models": [st.Page("pages/interactive.py", title="Interactive", icon=":material/chat:"),
               st.Page("pages/game.py", title="Game", icon=":material/casino:")],
}
page = st.navigation(pages)

with st.sidebar:
    st.caption(f"tracking: `{settings.tracking_uri}`")
    if settings.overrides:
        st.caption("model overrides: " + " ".join(f"`{o}`" for o in settings.overrides))
    if st.button("Refresh runs", help="Re-read the tracking server (run lists are cached for 30 s)."):
        st.cache_data.clear()

page.run()
