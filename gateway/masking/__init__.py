"""Masking of cardholder data in the data path (DESIGN §4, issue 4). Sans-IO.

* `methods`: the policy's mask methods applied to one column value (``apply``,
  ``resolve``) and ``binary_safe`` for binary-format results.
* `safety_net`: a content scanner that finds Luhn-valid PANs in arbitrary outgoing bytes
  and masks them without changing any length (``scan``, ``mask_in_place``,
  ``StreamScanner``).
"""

from .methods import (
    METHODS,
    MaskError,
    UnknownMaskMethod,
    WeakMaskKey,
    apply,
    binary_safe,
    resolve,
)
from .safety_net import StreamScanner, luhn_valid, mask_in_place, scan

__all__ = [
    "METHODS",
    "MaskError",
    "StreamScanner",
    "UnknownMaskMethod",
    "WeakMaskKey",
    "apply",
    "binary_safe",
    "luhn_valid",
    "mask_in_place",
    "resolve",
    "scan",
]
