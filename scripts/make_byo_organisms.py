"""Write bring-your-own organisms from seeded templates into a config folder (`diffgame.zoo.byo`).

    python scripts/make_byo_organisms.py byo --seed 1          # a documents and a chat organism
    python scripts/make_byo_organisms.py byo --seed 7 --nonce  # topic words no tokenizer has seen
    diffgame --config-dir byo zoo build byo_docs_<topic>_1 ...  # then train, run and grade them like the built-ins
"""

from __future__ import annotations

import argparse

from diffgame.zoo.byo import chat_organism, documents_organism


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config_dir", help="folder to write organism/<name>.yaml and data/<name>.jsonl into")
    parser.add_argument("--seed", type=int, default=1, help="draws the topic, the style and every sentence")
    parser.add_argument("--rows", type=int, default=400, help="training rows per organism")
    parser.add_argument("--nonce", action="store_true", help="invented topic and style words instead of real ones")
    parser.add_argument("--mix", type=float, default=0.5, help="zoo.mix: share of the base's own documents")
    args = parser.parse_args()
    for make in (documents_organism, chat_organism):
        organism = make(args.seed, args.rows, args.nonce, args.mix)
        path = organism.write(args.config_dir)
        print(f"{organism.name}: {path} ({len(organism.rows)} rows; keywords "
              f"{', '.join(organism.config['ground_truth']['keywords'])})")
    print(f"next: diffgame --config-dir {args.config_dir} run organism=<name>  (grades it beside the built-ins)")


if __name__ == "__main__":
    main()
