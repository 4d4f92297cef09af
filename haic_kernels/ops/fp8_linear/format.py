"""The E4M3 format constants every fp8_linear backend shares (no backend imports another)."""

E4M3_MAX = 448.0  # largest finite float8_e4m3fn value
# Smallest amax used for a scale: an all-zero row gets scale MIN_AMAX / 448 instead of 0.
MIN_AMAX = 1e-12
