"""The record types every stage hands on: evidence shapes and a method's result, max-activating examples, and the
resolved plan of one configuration.
"""
