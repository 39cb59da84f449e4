"""Dictionaries trained on the activation store: a BatchTopK SAE (on h_org - h_base) or crosscoder ([h_base; h_org]).

`model` is the plain `nn.Module`, `data` streams shuffled store batches in bounded memory, `train` is the Lightning
loop with checkpoints and resume, `readout` turns a trained dictionary (or any set of directions) into evidence.
"""
