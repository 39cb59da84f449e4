"""The app's backend and the CLI's run tables, without Streamlit: `runs` (run tables, grades, links), `heat` (token
heat, example filters), `game` (draw and grade a guess), `live` (probe a loaded pair)."""
