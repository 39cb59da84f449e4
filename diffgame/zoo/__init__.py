"""The embedded toy organism zoo: synthetic corpora, a BPE tokenizer, a small Llama base and finetuned organisms.

`diffgame zoo build --size micro` trains them offline; `locate(cfg, organism)` finds (or builds) one for loading.
"""

from diffgame.data.corpora import CORPORA, CORPUS_VERSION, corpus, corpus_format
from diffgame.zoo.build import EXPERIMENT, ZooEntry
from diffgame.zoo.recipes import recipe_rows
from diffgame.zoo.registry import build_zoo, list_zoo, locate, print_zoo, zoo_organisms
from diffgame.zoo.sizes import SIZES, ZooSize, get_size

__all__ = ["CORPORA", "CORPUS_VERSION", "EXPERIMENT", "SIZES", "ZooEntry", "ZooSize", "build_zoo", "corpus", "corpus_format",
           "get_size", "list_zoo", "locate", "print_zoo", "recipe_rows", "zoo_organisms"]
