"""PCA runs: components of h_org - h_base per layer, explained variance, and for a chosen component (either sign)
its lens tokens, max-projection examples and live steering of both models."""

import cache
import directions

directions.page("pca", cache.settings())
