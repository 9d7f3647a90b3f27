"""Channel division of the paper's "1-n" networks (ResNet18-1-16, VGG-1-4, VGG-1-32; §4)."""

__all__ = ["ALLOWED_DIVISORS", "divide_channels"]

# n of "1-n": every conv width is divided by n (the paper uses 4, 16 and 32; 1 = stock widths).
ALLOWED_DIVISORS = (1, 2, 4, 8, 16, 32)


def divide_channels(channels: int, divisor: int) -> int:
    """Width of a conv layer of a "1-n" network: ``channels // divisor``, at least 1."""
    if divisor not in ALLOWED_DIVISORS:
        raise ValueError(f"Unknown channel divisor: {divisor}; expected one of {ALLOWED_DIVISORS}")
    return max(1, channels // divisor)
