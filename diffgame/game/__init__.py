"""The diffing game's parts: agents (the offline lens and probe agents, LLM agents over an endpoint) that play on the
evidence of finished runs with a toolbox under a budget of model interactions (`probes`), graded by keywords or an
LLM rubric. `diffgame.pipeline.play` runs a play as a tracked stage.
"""
