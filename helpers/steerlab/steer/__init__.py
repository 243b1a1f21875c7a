"""Steering methods, one contract (:mod:`steerlab.steer.registry`): SAE feature edits (``features``: amplify,
calibrate, clamp, add), SPARE (``spare``: fit + edit), steering vectors (``vectors``: ActAdd, mean difference,
learned) and decoding methods (``decoding``: CAD, ICL, and the greedy decoder they share).

``from steerlab.steer import registry; registry.build("amplify", model, saes, hook_name=..., features=[...])``.
"""
