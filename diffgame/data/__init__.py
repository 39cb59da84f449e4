"""Text for the stores and methods: the configured datasets tokenized with a role per token, and the zoo's synthetic
corpora.
"""
