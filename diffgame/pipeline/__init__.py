"""Drive the stages: type each composed configuration once, build the zoo models it loads (`building`), plan it
(`planner`), build or reuse its store, run and grade its methods (`chain`, `runner`), and let an agent play the game on
finished runs (`play`).
"""
