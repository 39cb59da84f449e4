"""The configuration: the config tree on disk, its typed schemas, composition with overrides and sweeps, validation,
and the method registry.
"""
