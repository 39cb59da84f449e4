"""diffgame app entry point: a router. Sets the page config, reads the CLI settings, shows the sidebar, runs the page.

Launch: `diffgame app [--port N] [--tracking-uri URI] [OVERRIDES]`, or
`streamlit run app/Home.py -- --tracking-uri sqlite:///mlflow.db model.dtype=float32`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import cache, widgets` under AppTest too

import streamlit as st  # noqa: E402

import cache  # noqa: E402
import widgets  # noqa: E402
from diffgame.ui import runs as backend  # noqa: E402

# the pages live in `views/`, not `pages/`: a `pages/` folder beside the entry point switches Streamlit to its older
# multipage mode, which (in AppTest, and on a server's first request) runs a page without this router around it
PAGES = Path(__file__).resolve().parent / "views"

st.set_page_config(page_title="diffgame", page_icon=":material/difference:", layout="wide")
settings = cache.settings()

pages = {
    "Runs": [st.Page("views/overview.py", title="Overview", icon=":material/dashboard:", default=True),
             st.Page("views/compare.py", title="Compare", icon=":material/compare:")],
    # a method with a page of its own (views/<method>.py) gets it; every method's runs show on "Any method"
    "Methods": [*(st.Page(f"views/{m}.py", title=m) for m in backend.known_methods() if (PAGES / f"{m}.py").is_file()),
                st.Page("views/methods.py", title="Any method", icon=":material/list:")],
    "Models": [st.Page("views/interactive.py", title="Interactive", icon=":material/chat:"),
               st.Page("views/game.py", title="Game", icon=":material/casino:"),
               st.Page("views/leaderboard.py", title="Leaderboard", icon=":material/leaderboard:")],
}
page = st.navigation(pages)

with st.sidebar:
    st.caption(f"tracking: `{settings.tracking_uri}`")
    if settings.overrides:
        st.caption("model overrides: " + " ".join(f"`{o}`" for o in settings.overrides))
    if st.button("Refresh runs", help="Re-read the tracking server (run lists are cached for 30 s)."):
        st.cache_data.clear()

st.session_state.pop(widgets.PAGE_RUN, None)  # the page about to run names its own run, if any
try:
    with st.spinner("Loading the page ..."):
        page.run()
except Exception as e:  # Streamlit's own stop and rerun signals are not Exceptions: they pass through
    widgets.page_error(e)
