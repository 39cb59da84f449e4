"""Grade evidence against an organism's ground truth offline: hits, scores, words from word pieces and free-text
guesses.
"""
