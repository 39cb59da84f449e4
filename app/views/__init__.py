"""The app's pages, one per view; each is run by Streamlit as a script."""
