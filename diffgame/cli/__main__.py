"""`python -m diffgame.cli` (as `torchrun -m diffgame.cli` starts each rank)."""

from diffgame.cli import main

if __name__ == "__main__":
    main()
