"""The embedded toy organism zoo: synthetic corpora, a BPE tokenizer, a small Llama base and finetuned organisms.

`diffgame zoo build --size micro` trains them offline (`diffgame.pipeline.building` names which); `locate(cfg,
organism)` finds a built one for loading.
"""

from diffgame.data.corpora import CORPORA, CORPUS_VERSION, corpus, corpus_format
from diffgame.zoo.build import EXPERIMENT, ZooEntry
from diffgame.zoo.recipes import recipe_rows
from diffgame.zoo.built import build_models, ensure, list_zoo, locate, print_zoo
from diffgame.zoo.sizes import SIZES, ZooSize, get_size

__all__ = ["CORPORA", "CORPUS_VERSION", "EXPERIMENT", "SIZES", "ZooEntry", "ZooSize", "build_models", "corpus",
           "corpus_format", "ensure", "get_size", "list_zoo", "locate", "print_zoo", "recipe_rows"]
