"""Helpers shared by every test layer: example recipes, job specs, the kmock harness, SeaweedFS, the tiny model."""
