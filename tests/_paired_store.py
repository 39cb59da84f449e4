"""Write a small activation store with hand-chosen tokens and activations through `diffgame.store.StoreWriter`.

Tests use it to plant known signals (organism = base + a known vector) in a real store on disk.
"""

from __future__ import annotations

from pathlib import Path

import torch

from diffgame.store import ActivationStore, StoreWriter, act_file, shard_name, tokens_file


def write_store(root: Path, datasets: dict[str, dict], layers: list[int], dtype: str = "float32") -> ActivationStore:
    """`datasets`: name -> {"sequences": [(ids, roles), ...], "base": {layer: [N, D]}, "organism": {layer: [N, D]}}.

    One shard per dataset; positions count from 0 in each sequence; sequence ids are 0..S-1.
    """
    writer = StoreWriter(root)
    shard = shard_name(0)
    plan = {"layers": layers, "dtype": dtype, "shards": {}, "command": "test store"}
    d_model = None
    for name, spec in datasets.items():
        seqs = spec["sequences"]
        ids = torch.cat([torch.as_tensor(s[0], dtype=torch.int64) for s in seqs])
        roles = torch.cat([torch.as_tensor(s[1], dtype=torch.int64) for s in seqs])
        positions = torch.cat([torch.arange(len(s[0])) for s in seqs])
        offsets = torch.tensor([0] + [len(s[0]) for s in seqs]).cumsum(0)
        writer.write_part(name, shard, "tokens", {tokens_file(name, shard): {
            "input_ids": ids, "positions": positions, "roles": roles, "seq_offsets": offsets,
            "sequence_ids": torch.arange(len(seqs))}}, {"rank": 0})
        for role in ("base", "organism"):
            files = {}
            for layer in layers:
                act = spec[role][layer].to(getattr(torch, dtype))
                assert act.shape[0] == len(ids)
                d_model = act.shape[1]
                files[act_file(name, role, layer, shard)] = {"act": act}
            writer.write_part(name, shard, role, files, {"rank": 0})
        plan["shards"][name] = [{"name": shard, "n_tokens": len(ids), "n_sequences": len(seqs)}]
    plan["d_model"] = d_model
    writer.write_plan(plan)
    writer.finalize(plan, {})
    return ActivationStore.open(root)


def word_tokenizer(vocab_size: int):
    """A fast tokenizer whose token i is the word `w<i>` (decodes example tokens without any download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", pad_token="w0")
