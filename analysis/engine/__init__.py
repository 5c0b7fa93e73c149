"""Pure numerics and rendering for UnitScope.

Nothing here imports Django, Celery or any other part of the project: every module takes arrays,
tensors, paths and plain parameters, and returns arrays, tensors, images and dataclasses. Devices are
chosen by the caller (``device`` arguments); results are deterministic under a seed.
"""
