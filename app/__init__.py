"""The Streamlit app (`diffgame app`): a router (Home.py) and thin pages; shipped as `diffgame.app`."""
