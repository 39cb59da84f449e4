"""What travels down the stages: the typed config (`schema`), the resolved plan of one configuration (`plan`),
evidence shapes and a method's result (`evidence`), and max-activating examples (`examples`).
"""
