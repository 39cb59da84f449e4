"""The configuration: the config tree on disk (`configtree`), composition with overrides and sweeps (`compose`),
validation against the typed schemas of `diffgame.records.schema` (`validate`), and the method registry (`registry`).
Only the pipeline and the layers above it read the tree; everything below gets the typed config.
"""
