"""The detection methods, one module each, registered by name in ``registry.METHODS``.

A method (``base.Method``) owns everything that differs between methods: backbone loading, the
preprocessing policy, the model it builds, its smoothing default, how its image score is made,
which options it takes, its evaluation protocol, its FLOP count and the rule its manifest record
follows. Export, reference add, eval, bench, calibration and the CLI ask the method instead of
comparing names. Importing these modules imports neither torch nor open_clip (serving reads the
registry); a method imports its model code inside the functions that build it.
"""
