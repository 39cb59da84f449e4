"""Both models and their parts: where weights load from (hub, folder, GGUF), loading, batching, residual hooks,
steering, the logit lens, paired logits, and the one sampler every generated text comes from (`generation`).
"""
