"""The built-in config tree (one folder per group), shipped inside the package as `diffgame.experiments`."""
