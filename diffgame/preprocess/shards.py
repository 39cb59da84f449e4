"""The shard plan: batches of similar-length sequences grouped into shards, fixed before any forward pass.

A fixed plan is what makes a resumed or multi-rank run write the same bytes as one uninterrupted process.
"""

from __future__ import annotations

from pathlib import Path

from diffgame.errors import StoreError
from diffgame.records.plan import Plan
from diffgame.store import MODEL_ROLES, StoreWriter, shard_name


def plan_shards(sequences: dict, batch_size: int, shard_tokens: int) -> dict[str, list[dict]]:
    """Per dataset, shards of batches of similar-length sequences (longest first); fixed before any work."""
    out, index = {}, 0
    for name, seqs in sequences.items():
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i].input_ids))  # stable: ties keep row order
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        shards, current, n = [], [], 0
        for b in batches:
            current.append(b)
            n += sum(len(seqs[i].input_ids) for i in b)
            if n >= shard_tokens:
                shards.append((current, n))
                current, n = [], 0
        if current:
            shards.append((current, n))
        out[name] = []
        for batches_, n_tok in shards:
            out[name].append({"name": shard_name(index), "index": index, "n_tokens": n_tok,
                              "n_sequences": sum(len(b) for b in batches_), "batches": batches_})
            index += 1
    return out


def shard_plan(plan: Plan, root: Path, sequences, shard_tokens) -> dict:
    """The shard plan: recorded in the store on first use, and re-used as recorded when resuming."""
    cfg, layers, d_model, fp = plan.cfg, plan.layers, plan.d_model, plan.store_fingerprint
    writer = StoreWriter(root)
    old = writer.read_plan()
    batch_size = int(old["batch_size"]) if old else int(cfg.preprocessing.batch_size)
    shard_tokens = int(old["shard_tokens"]) if old else int(shard_tokens)
    plan = {"fingerprint": fp, "layers": layers, "d_model": d_model, "dtype": cfg.preprocessing.dtype,
            "roles": list(MODEL_ROLES), "model": cfg.model.name, "organism": cfg.organism.name,
            "context_length": int(cfg.preprocessing.context_length), "batch_size": batch_size,
            "shard_tokens": shard_tokens, "command": plan.command(),
            "shards": plan_shards(sequences, batch_size, shard_tokens)}
    if old is not None and old["shards"] != plan["shards"]:
        raise StoreError(f"the partial store at {root} was planned for different data; delete it (or its run) "
                         f"and rerun `{plan.command()}`")
    if old is None:
        root.mkdir(parents=True, exist_ok=True)
        writer.write_plan(plan)
    return plan
