"""The `kl` method's runs: statistics, examples as token heat, token tables, samples and plots."""

import cache
import widgets

widgets.method_page("kl", cache.settings())
