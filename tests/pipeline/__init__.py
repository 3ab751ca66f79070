"""A selection's steps and flows: data, models, probes, fit, adaptive probing, caching,
resilience."""
