"""The `normdiff` method's runs: statistics, examples as token heat, token tables, samples and plots."""

import cache
import widgets

widgets.method_page("normdiff", cache.settings())
