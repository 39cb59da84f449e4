"""Crosscoder runs: latents tagged base-only / shared / organism-only with their β ratios (Δ against ν^ε), and for
an evidence latent its lens tokens, max-activating examples and live steering of both models."""

import cache
import directions

directions.page("crosscoder", cache.settings())
