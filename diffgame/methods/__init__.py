"""The diffing methods, one file each; `diffgame.config.registry` binds their names. A method never imports another."""

from diffgame.methods.base import Method, MethodContext, MethodResult, TextRequest

__all__ = ["Method", "MethodContext", "MethodResult", "TextRequest"]
