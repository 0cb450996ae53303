"""Score and threshold calibration: planned, see the calibration issue. Nothing here yet."""
