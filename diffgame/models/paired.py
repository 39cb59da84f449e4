"""Run the base and the organism over one flat token stream and hand out their next-token logits chunk by chunk.

Sequences are batched by similar length (no padding reaches the results), each batch runs both models' bodies once,
and the LM heads run on at most `chunk` tokens at a time, so a 262k vocabulary never needs [N, V] logits in memory.
`kl` and `diffmining` consume these chunks.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from diffgame.models.batching import length_batches, pad_right
from diffgame.models.loading import lm_logits, unembedding


def default_chunk_tokens(vocab: int, device: torch.device, chunk_elements: int = 0) -> int:
    """Tokens per LM-head chunk: `chunk_elements // vocab` when given, else on the CPU 2**19 logits (cache-sized)
    but at least 256 tokens (smaller matmuls re-read the unembedding too often), on an accelerator 2**28."""
    if chunk_elements:
        return max(1, chunk_elements // vocab)
    if device.type == "cpu":
        return max(256, 2 ** 19 // vocab)
    return max(1, 2 ** 28 // vocab)


@torch.inference_mode()
def logit_chunks(base_model, org_model, input_ids: torch.Tensor, seq_offsets: torch.Tensor, batch_tokens: int,
                 chunk: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """`(where [c], logits_org [c, V], logits_base [c, V])` over every token of the stream on the shared vocabulary
    (V = `shared_vocab`): `where` holds each row's index in the flat stream; logits stay in the models' dtype on
    their device.

    `input_ids` [N] holds sequences back to back; `seq_offsets` [S+1] marks where each starts and ends.
    """
    device = next(base_model.parameters()).device
    offsets = seq_offsets.tolist()
    shared = shared_vocab(base_model, org_model)
    lengths = [b - a for a, b in zip(offsets[:-1], offsets[1:])]
    for batch in length_batches(lengths, batch_tokens):
        ids, mask = pad_right([input_ids[offsets[s]:offsets[s + 1]] for s in batch], 0)
        # the valid tokens' rows, found on the host: a boolean index of a device tensor would wait for the forward
        valid = mask.flatten().nonzero().squeeze(1).to(device, non_blocking=True)
        ids, mask = ids.to(device), mask.to(device)
        # final hidden states of the valid tokens, row-major: [n, D]
        h_base = base_model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state.flatten(0, 1)[valid]
        h_org = org_model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state.flatten(0, 1)[valid]
        where = torch.cat([torch.arange(offsets[s], offsets[s + 1]) for s in batch])
        for i in range(0, len(h_base), chunk):
            yield (where[i:i + chunk], lm_logits(org_model, h_org[i:i + chunk])[:, :shared],
                   lm_logits(base_model, h_base[i:i + chunk])[:, :shared])


def vocab_size(model) -> int:
    return unembedding(model).weight.shape[0]


def shared_vocab(base_model, org_model) -> int:
    """Output rows both models have: an organism with tokens appended to the base's vocabulary is compared on the
    base's rows (`models.vocab_extends`)."""
    return min(vocab_size(base_model), vocab_size(org_model))
