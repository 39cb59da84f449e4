"""Evidence as the app shows it, without Streamlit: token heat as HTML, example filters, ranked-token tables."""

from __future__ import annotations

import html
import math

import pandas as pd


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet inverted (`bytes_to_unicode`): the character each byte is written as -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]  # space, newline, ... written as Ġ, Ċ, ... (256 + n)
    return {**{chr(b): b for b in printable}, **{chr(256 + n): b for n, b in enumerate(rest)}}


BYTE_OF_CHAR = _byte_level_alphabet()


def _from_byte_level(piece: str) -> str:
    """`piece` decoded from the byte-level alphabet (`Ġvolcanic` -> ` volcanic`, `âĢĻ` -> `’`) when it is written
    in it; text that is not (plain words, SentencePiece pieces, already decoded tokens) comes back unchanged."""
    if not piece or any(c not in BYTE_OF_CHAR for c in piece):
        return piece
    raw = bytes(BYTE_OF_CHAR[c] for c in piece)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # part of a multi-byte character, or plain Latin-1 text such as `café`
        remapped = any(ord(c) != b for c, b in zip(piece, raw))
        return raw.decode("utf-8", errors="backslashreplace") if remapped else piece


def display_token(piece: str) -> str:
    """A stored token or word as the app shows it: byte-level BPE decoded, SentencePiece's `▁` read as a space,
    a leading space as `␣` (`Ġvolcanic`, ` volcanic`, `▁volcanic` -> `␣volcanic`), newlines `↵` and tabs `⇥`."""
    text = _from_byte_level(piece).replace("▁", " ")
    body = text.lstrip(" ")
    return ("␣" * (len(text) - len(body)) + body).replace("\n", "↵").replace("\t", "⇥")


def heat_alpha(score: float, vmax: float) -> float:
    """Opacity of a token's colour: |score| / vmax clipped to [0, 1], 3 decimals (0 for vmax <= 0 or NaN)."""
    if not vmax or vmax <= 0 or score is None or math.isnan(score):
        return 0.0
    return round(min(abs(score) / vmax, 1.0), 3)


def heat_html(tokens: list[str], scores: list[float], vmax: float | None = None) -> str:
    """Tokens as inline spans coloured by score (red positive, blue negative), written by `display_token`; hover
    shows the value."""
    finite = [abs(s) for s in scores if s is not None and not math.isnan(s)]
    vmax = vmax if vmax is not None else (max(finite) if finite else 0.0)
    spans = []
    for tok, s in zip(tokens, scores):
        rgb = "220,38,38" if (s or 0) >= 0 else "37,99,235"
        shown = display_token(tok)
        text = html.escape(shown).replace("↵", "↵<br>")
        wrap = "<wbr>" if shown.startswith("␣") else ""  # a line may break before a word: `␣` is no whitespace
        spans.append(f'{wrap}<span class="tok" title="{s:.4g}" style="background-color:rgba({rgb},'
                     f'{heat_alpha(s, vmax)})">{text}</span>')
    return ('<div class="heat" style="font-family:monospace;white-space:pre-wrap;line-height:1.7">'
            + "".join(spans) + "</div>")


def example_role(example) -> str:
    """The role of an example's highest-scoring token ('' when roles are unknown)."""
    if not example.roles:
        return ""
    i = max(range(len(example.token_scores)), key=lambda j: example.token_scores[j])
    return example.roles[i]


def filter_examples(examples: list, query: str = "", datasets: list[str] | None = None,
                    roles: list[str] | None = None) -> list:
    """Examples whose text contains `query` (case-insensitive), from `datasets`, peaking on a token of `roles`."""
    q = query.lower()
    out = []
    for ex in examples:
        if q and q not in "".join(ex.tokens).lower():
            continue
        if datasets and ex.dataset not in datasets:
            continue
        if roles and example_role(ex) not in roles:
            continue
        out.append(ex)
    return out


def readable_tokens(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with its token columns (`token`, `tokens`; strings or lists of strings) written by `display_token`."""
    for col in ("token", "tokens"):
        if col not in table:
            continue
        if all(isinstance(t, str) for t in table[col]):
            table = table.assign(**{col: table[col].map(display_token)})
        elif all(hasattr(t, "__iter__") and not isinstance(t, str) for t in table[col]):
            table = table.assign(**{col: [[display_token(str(x)) for x in t] for t in table[col]]})
    return table


def ranked_frame(ranked, label: str = "token") -> pd.DataFrame:
    """A RankedTokens as a table: rank, token (or `label`) as `display_token` writes it, id, score."""
    return pd.DataFrame({"rank": range(1, len(ranked.tokens) + 1), label: [display_token(t) for t in ranked.tokens],
                         "token_id": ranked.token_ids, "score": ranked.scores})


