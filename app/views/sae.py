"""SAE runs: the latents of h_org - h_base per layer, and for an evidence latent its lens tokens, max-activating
examples and live steering of both models."""

import cache
import directions

directions.page("sae", cache.settings())
