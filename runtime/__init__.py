"""The runtime: serving exported artifacts.

A frame's way, top to bottom: ``sources`` (cameras, streams, videos, image files) -> the one image
path (``clipad.data.images``) -> ``backends`` -> ``scoring`` (one ``Prediction`` per frame) ->
``overlay`` -> ``sinks`` and ``server`` (events, video, snapshots, window, web viewer), driven by
``pipeline`` and assembled by ``run``; ``predict`` scores image files, ``serving`` opens artifacts,
backend and calibration for every serving command, ``parity`` and ``bench`` measure backends, and
``demo`` runs everything offline.
"""
