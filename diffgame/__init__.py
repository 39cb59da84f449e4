"""diffgame: find out what finetuning changed by diffing a base model and a model organism."""

__version__ = "0.1.0"
