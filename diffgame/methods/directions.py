"""The base of methods that fit directions on the store and read them out (`pca`, `sae`, `crosscoder`).

They read the store and both models (for the logit lens and steering), ask for steering prompts, and fit the layers and
datasets their `ReadoutConfig` names.
"""

from __future__ import annotations

from diffgame.dictionary.readout import fitted_datasets, fitted_layers
from diffgame.methods.base import Method, MethodContext, TextRequest


class ReadoutMethod(Method):
    """A store method with lens readouts and steering; `self.config` is a `ReadoutConfig`."""

    needs_store = True
    needs_models = True
    version = 2  # 2: steering samples come from the one sampler (`diffgame.models.generation`), scored as they are drawn

    def texts(self) -> dict[str, TextRequest]:
        c = self.config
        if not c.steering_prompts:
            return {}
        return {"steering": TextRequest(c.steering_dataset, "text", "test", c.steering_prompts)}

    def fitted(self, ctx: MethodContext, name: str) -> tuple[list[int], list[str]]:
        """The store layers and datasets this run fits (`name`: the method's registry name, for error messages)."""
        return (fitted_layers(self.config, ctx.store, ctx.organism.n_layers, f"method.{name}.layers"),
                fitted_datasets(self.config, ctx.store, f"method.{name}.datasets"))
