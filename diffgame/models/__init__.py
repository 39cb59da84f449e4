"""Both models and their parts: where weights load from (hub, folder, GGUF), loading, batching, residual hooks,
steering, the logit lens and paired logits.
"""
