"""The diffing game's parts: agents (a lens agent, LLM agents over an endpoint) that play on the evidence of finished
runs with a toolbox, graded by keywords or an LLM rubric. `diffgame.pipeline.play` runs a play as a tracked stage.
"""
