"""Chain the stages for `diffgame run/preprocess/diff`: compose, plan each configuration once, build or reuse its
store, run and grade its methods.
"""
