"""Presenting results: validation reports (json/md/html/junit), evaluation pages, benchmark tables and plots.

Everything here renders data that `validators/`, `evaluate` and `bench` computed; nothing here
judges or measures.
"""
