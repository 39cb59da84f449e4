"""Live probes of a loaded base/organism pair for the app: per-token KL and normdiff, generation, steering and
amplified replies streamed token by token.

The math is the methods' own (`diffgame.methods.divergence`, the residual-norm difference normdiff stores);
this module only runs both models on one user text and lines the results up token by token.
"""

from __future__ import annotations

import html
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import nullcontext

import pandas as pd
import torch

from diffgame.data.sequences import ROLES, render_chat
from diffgame.errors import ConfigError
from diffgame.methods.divergence import token_divergence
from diffgame.methods.sampling import WORD, log_odds, words
from diffgame.models.amplified import amplified_weights
from diffgame.models.generation import continue_ids, steps
from diffgame.models.loading import ModelHandle, decoder_layers, stop_ids
from diffgame.models.residuals import on_output
from diffgame.models.steering import steer, vector_layer  # noqa: F401  (the app's steering)
from diffgame.records.schema import RootConfig


def encode(handle: ModelHandle, text: str | None = None, messages: list[dict] | None = None,
           add_generation_prompt: bool = False) -> tuple[list[int], list[str]]:
    """Token ids and per-token roles of a plain text (role `text`) or a chat rendered with the template."""
    if messages is not None:
        ids, roles = render_chat(messages, handle.tokenizer, add_generation_prompt)
        return list(ids), [ROLES[r] for r in roles]
    if not text:
        raise ConfigError("no text given; type some text (or a chat) to probe")
    ids = handle.tokenizer(text).input_ids
    return list(ids), ["text"] * len(ids)


def _residuals(handle: ModelHandle, ids: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [T, V] and the residual after decoder layer `layer` [T, D] for one sequence [1, T]."""
    captured = {}

    def record(hidden: torch.Tensor) -> None:
        captured["h"] = hidden[0].detach()

    with on_output(handle.model, layer, record):
        logits = handle.model(ids.to(handle.device)).logits[0]
    return logits, captured["h"]


@torch.no_grad()
def token_scores(base: ModelHandle, org: ModelHandle, ids: list[int], layer: int,
                 roles: list[str] | None = None, divergence: str = "kl") -> pd.DataFrame:
    """Per token: KL(P_org || P_base) of the next-token distributions and ||h_org - h_base|| at `layer`.

    Row t scores the prediction made *at* token t (as the `kl` method does), so the last row is the
    distribution over what would come next.
    """
    n_layers = len(decoder_layers(base.model))
    if not 0 <= layer < n_layers:
        raise ConfigError(f"layer {layer} is out of range for a model with {n_layers} layers (valid: 0..{n_layers - 1})")
    x = torch.tensor([ids])  # [1, T]
    logits_b, h_b = _residuals(base, x, layer)
    logits_o, h_o = _residuals(org, x, layer)
    shared = min(logits_o.shape[-1], logits_b.shape[-1])  # an organism with appended tokens: the base's rows
    kl = token_divergence(logits_o[..., :shared], logits_b[..., :shared].to(logits_o.device), divergence)  # [T]
    delta = h_o.float() - h_b.float().to(h_o.device)  # [T, D]
    return pd.DataFrame({
        "position": range(len(ids)), "token": decode_tokens(base.tokenizer, ids),
        "role": roles or ["text"] * len(ids), "kl": kl.cpu().numpy(),
        "normdiff": delta.norm(dim=-1).cpu().numpy(),
        "cosine_distance": (1 - torch.nn.functional.cosine_similarity(h_o.float(), h_b.float().to(h_o.device),
                                                                      dim=-1)).cpu().numpy()})


def decode_tokens(tokenizer, ids: list[int]) -> list[str]:
    """Each token's own text (spaces kept), so the pieces concatenate back to the decoded string."""
    return [tokenizer.decode([i]) for i in ids]


def generate(handle: ModelHandle, ids: list[int], max_new_tokens: int = 32, do_sample: bool = False,
             temperature: float = 1.0, seed: int = 0, vector: torch.Tensor | None = None, layer: int = 0,
             scale: float = 1.0, mode: str = "all") -> str:
    """Continue `ids` (new text only), optionally steered by `scale * vector` at `layer` (`diffgame.models.steering`)."""
    ctx = steer(handle.model, vector, layer, scale, mode) if vector is not None else nullcontext()
    with ctx:
        return continue_ids(handle.model, handle.tokenizer, ids, max_new_tokens, do_sample, temperature, seed)


def load_run_pair(cfg: RootConfig):
    """Base and organism of a typed config, loaded (zoo models are located; a run's models were built for it)."""
    from diffgame.models.loading import load_pair
    from diffgame.zoo.pairs import resolve_pair

    return load_pair(resolve_pair(cfg))


AMPLIFIED = ("base", "organism", "amplified")
_WEIGHTS = threading.Lock()
"""Weight amplification rewires the shared organism while it samples: one such reply at a time across sessions."""


@torch.no_grad()
def amplified_reply(base: ModelHandle, org: ModelHandle, ids: list[int], which: str, kind: str = "logit",
                    strength: float = 2.0, max_new_tokens: int = 48, temperature: float = 1.0,
                    seed: int = 0) -> Iterator[str]:
    """One reply of `which` (`base`, `organism`, or the organism `amplified` by logit-diff `kind="logit"` with alpha
    = `strength`, or by weights `kind="weight"` with w = `strength`) to `ids`, as text pieces while it is sampled.
    Seeded: the same seed gives the same reply (`diffgame.models.generation`)."""
    if which not in AMPLIFIED or kind not in ("logit", "weight"):
        raise ConfigError(f"unknown reply {which!r} / amplification {kind!r}; valid: {', '.join(AMPLIFIED)} / logit, "
                          f"weight")
    model = base.model if which == "base" else org.model
    logit = which == "amplified" and kind == "logit"
    weights = which == "amplified" and kind == "weight"
    with _WEIGHTS if weights else nullcontext(), \
            amplified_weights(base.model, org.model, strength) if weights else nullcontext():
        x = torch.tensor([list(ids)], device=model.device)  # [1, T]
        generator = torch.Generator(model.device).manual_seed(seed)
        stop, new, text = stop_ids(base.tokenizer), [], ""
        for n, step in enumerate(steps(base.model if logit else None, model, x, torch.ones_like(x),
                                       strength if logit else 0.0, temperature, generator)):
            token = int(step.token[0])
            if token in stop:
                return
            new.append(token)
            full = base.tokenizer.decode(new, skip_special_tokens=True)
            if not full.endswith("\ufffd"):  # a character split across tokens waits for its last byte
                yield full[len(text):]
                text = full
            if n + 1 == max_new_tokens:
                return


def overused_html(text: str, reference: str) -> str:
    """`text` as HTML with the words it uses more than `reference` marked (log-odds z > 0, `methods.sampling`)."""
    counts = Counter(words(text)), Counter(words(reference))
    table = log_odds(*counts, min_count=1)
    marked = set(table[table["z"] > 0]["word"])
    out, last = [], 0
    for m in WORD.finditer(text):
        out.append(html.escape(text[last:m.start()]))
        word = m.group(0)
        hit = word in marked or word.lower() in marked
        out.append(f"<mark>{html.escape(word)}</mark>" if hit else html.escape(word))
        last = m.end()
    out.append(html.escape(text[last:]))
    return "<div style='white-space: pre-wrap'>" + "".join(out) + "</div>"
