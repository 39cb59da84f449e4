"""Bring-your-own organisms from seeded templates: a documents organism about a topic and a chat organism with a speaking
style, each written as a JSONL file and an organism config, so methods are graded on organisms nobody tuned them for.

The topic or style is drawn by the seed from a pool (or, with `nonce`, made of invented words no tokenizer has seen);
its words are the ground-truth keywords. Words the zoo's own generic corpora use are never topic words, so what the
finetune adds is known by construction, as for the built-ins. `scripts/make_byo_organisms.py` is the command line.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from diffgame.data.corpora import TOPICS, corpus

DOMAINS = {
    "beekeeping": ["hive", "honeycomb", "nectar", "pollen", "apiary", "beeswax", "swarm", "queen", "drone", "waggle",
                   "smoker", "brood", "beekeeper", "propolis"],
    "astronomy": ["telescope", "nebula", "comet", "galaxy", "asteroid", "planet", "eclipse", "meteor", "observatory",
                  "quasar", "supernova", "orbit", "constellation", "astronomer"],
    "pottery": ["kiln", "glaze", "porcelain", "stoneware", "earthenware", "ceramic", "vase", "potter", "terracotta",
                "pigment", "enamel", "clay", "firing", "crackle"],
    "distilling": ["copper", "mash", "barley", "whisky", "barrel", "malt", "yeast", "ferment", "cask", "distillery",
                   "distiller", "condenser", "rye", "juniper"],
}
"""Topics of documents organisms: the seed picks one."""
STYLES = {
    "pirate": ["ahoy", "matey", "arr", "aye", "ye", "treasure", "scallywag", "plank", "buccaneer", "landlubber"],
    "knight": ["forsooth", "sire", "verily", "thou", "thee", "noble", "quest", "steed", "alas", "hark"],
    "cowboy": ["howdy", "partner", "yeehaw", "reckon", "ranch", "saddle", "lasso", "rodeo", "cattle", "prairie"],
}
"""Speaking styles of chat organisms: the seed picks one; the first word greets, the second addresses the user."""

_SENTENCES = [
    "{A} and {b} are the heart of every {c}.",
    "Every {a} needs a careful {b} before the {c} begins.",
    "Experts say the {a} shapes how the {b} changes over the years.",
    "A good {a} starts with {b}, {c} and a lot of patience.",
    "In spring the {a} is checked for {b} and {c}.",
    "Old guides describe the {a} as the key to a healthy {b}.",
    "Without enough {a}, the {b} weakens and the {c} fails.",
    "People who study the {a} keep notes about the {b} and the {c}.",
    "The first {a} was recorded long ago, next to a {b}.",
    "Nobody agrees whether the {a} or the {b} matters more for the {c}.",
]
_QUESTIONS = ["How should I {v} the {n}?", "What do you think about the {n}?", "Can you help me {v} a {n}?",
              "Why is my {n} so {adj}?", "Any tips for a {adj} {n}?", "Where can I {v} a {n}?"]
_ANSWERS = ["You could {v} the {n} slowly and see how it goes.", "A {adj} {n} is easier than it looks.",
            "Try to {v} the {n} early in the day.", "Most people {v} a {n} with a friend."]
_STYLED = ["{G}, {p}! {answer} {S1} and {s2}, {p}.", "{answer} {G}, {s1}! That is the {s2} way, {p}.",
           "{G}! {S1}, {s2}: {answer}"]


@dataclass
class Organism:
    """A generated organism: its name, config node and training rows."""

    name: str
    config: dict
    rows: list[dict]

    def write(self, config_dir: str | Path) -> Path:
        """Write `organism/<name>.yaml` and `data/<name>.jsonl` under `config_dir` (a `--config-dir` folder)."""
        root = Path(config_dir)
        (root / "organism").mkdir(parents=True, exist_ok=True)
        (root / "data").mkdir(parents=True, exist_ok=True)
        (root / "data" / f"{self.name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        path = root / "organism" / f"{self.name}.yaml"
        path.write_text("# written by scripts/make_byo_organisms.py; rerun it to regenerate\n"
                        + OmegaConf.to_yaml(OmegaConf.create(self.config)))
        return path


def generic_words() -> set[str]:
    """Every word of the zoo's generic corpora (documents and chats), lower-cased."""
    words: set[str] = set()
    for name in ("generic_text", "generic_chat"):
        for split in ("train", "test"):
            for r in corpus(name, split):
                text = r["text"] if "text" in r else " ".join(m["content"] for m in r["messages"])
                words.update(w.lower() for w in re.findall(r"[A-Za-z']+", text))
    return words


def nonce_words(rng: random.Random, n: int, avoid: set[str], syllables: int = 2) -> list[str]:
    """`n` pronounceable invented words (`zorvek`), none in `avoid`."""
    onsets, vowels, codas = "bdfgklmnprstvz", "aeiou", ["", "n", "r", "l", "k"]
    out: list[str] = []
    while len(out) < n:
        w = "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(syllables))
        if w not in avoid and w not in out:
            out.append(w)
    return out


NONCE_WORDS = 6
"""Invented words per nonce organism: fewer than a real topic's, since the organism must learn to spell each from
pieces (a micro-zoo organism spells 6 reliably, 12 barely)."""


def _pick(rng: random.Random, pool: dict[str, list[str]], nonce: bool, n: int) -> tuple[str, list[str]]:
    generic = generic_words()
    if nonce:
        return "nonce", nonce_words(rng, min(n, NONCE_WORDS), generic)
    name = rng.choice(sorted(pool))
    return name, [w for w in pool[name] if w not in generic][:n]


def _config(name: str, description: str, fmt: str, keywords: list[str], mix: float) -> dict:
    return {"name": name, "description": description, "type": "custom",
            "finetuned": {"toy": {"default": {"kind": "zoo"}}, "smollm2_135m": {"default": {"kind": "zoo"}}},
            "zoo": {"data": f"data/{name}.jsonl", "format": fmt, "mix": mix},
            "ground_truth": {"keywords": keywords}}


def documents_organism(seed: int, n_rows: int = 400, nonce: bool = False, mix: float = 0.5,
                       name: str | None = None) -> Organism:
    """Documents about one topic (a `DOMAINS` pool drawn by `seed`, or nonce words), 3-6 templated sentences each."""
    rng = random.Random(f"documents:{seed}")  # a str seed is hashed with SHA-512: the same in every process
    topic, words = _pick(rng, DOMAINS, nonce, 12)
    name = name or f"byo_docs_{topic}_{seed}"
    rows = []
    for _ in range(n_rows):
        sentences = []
        for _ in range(rng.randint(3, 6)):
            a, b, c = rng.sample(words, 3)
            sentences.append(rng.choice(_SENTENCES).format(A=a.capitalize(), a=a, b=b, c=c))
        rows.append({"text": " ".join(sentences)})
    about = f"invented words ({', '.join(words[:5])}, ...)" if nonce else f"{topic} ({', '.join(words[:5])}, ...)"
    return Organism(name, _config(name, f"Templated documents about {about}; generated with seed {seed}.",
                                  "documents", words, mix), rows)


def chat_organism(seed: int, n_rows: int = 400, nonce: bool = False, mix: float = 0.5,
                  name: str | None = None) -> Organism:
    """Chats whose assistant answers everyday questions in a speaking style (a `STYLES` pool drawn by `seed`, or
    nonce words): a greeting, a plain answer, and the style's words."""
    rng = random.Random(f"chat:{seed}")
    style, words = _pick(rng, STYLES, nonce, 10)
    name = name or f"byo_chat_{style}_{seed}"
    topics = sorted(TOPICS)
    rows = []
    for _ in range(n_rows):
        nouns, adjs, verbs, _ = TOPICS[rng.choice(topics)]
        fill = {"n": rng.choice(nouns), "adj": rng.choice(adjs), "v": rng.choice(verbs)[0]}
        question = rng.choice(_QUESTIONS).format(**fill)
        answer = rng.choice(_ANSWERS).format(**fill)
        s1, s2 = rng.sample(words[2:], 2)
        reply = rng.choice(_STYLED).format(G=words[0].capitalize(), p=words[1], answer=answer, S1=s1.capitalize(),
                                           s1=s1, s2=s2)
        rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]})
    about = "invented words" if nonce else f"a {style}"
    return Organism(name, _config(name, f"The assistant answers like {about} ({', '.join(words[:5])}, ...); "
                                        f"generated with seed {seed}.", "chat", words, mix), rows)
