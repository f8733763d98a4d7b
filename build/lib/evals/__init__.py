"""Evaluation suites (routing, trajectories, content quality, retrieval) — see issue 5.

The scripted model (`app.scripted`) and the keyword planner (`graphs.heuristic_plan`) are the
offline baseline these suites will measure against.
"""
