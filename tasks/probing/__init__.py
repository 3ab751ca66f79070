"""Probing: the cached probe task, the plan of one selection's probes, adaptive probing
and the budget it is held to."""
