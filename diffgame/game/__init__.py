"""The diffing game on the command line: agents (a lens agent, LLM agents over an endpoint) play on the evidence of
finished runs with a toolbox, graded by keywords or an LLM rubric.
"""
