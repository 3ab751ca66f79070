"""Torch training shared by probes, target training, the NTK features and the gate's
measurements."""
