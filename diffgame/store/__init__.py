"""The activation store: a flat token stream plus per-(role, layer) `[N, D]` safetensors shards and a manifest.

`layout` names every file, `writer` writes them (part markers after their files, the manifest last), `reader`
opens a complete store memory-mapped. See `diffgame.store.layout` for the folder layout.
"""

from diffgame.store.layout import FORMAT, MODEL_ROLES, PARTS, act_file, rebuild_hint, shard_name, tokens_file
from diffgame.store.reader import ActivationStore, SequenceView, TokenStream, mmap_tensors
from diffgame.store.writer import StoreWriter, write_file

__all__ = ["FORMAT", "MODEL_ROLES", "PARTS", "ActivationStore", "SequenceView", "StoreWriter", "TokenStream",
           "act_file", "mmap_tensors", "rebuild_hint", "shard_name", "tokens_file", "write_file"]
