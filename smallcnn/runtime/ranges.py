"""Numbers a user gives smallcnn, options and environment variables: finite, and in range.

Click parses "inf" and "nan" as floats and any run of digits as an int, and NaN slips
through every comparison (`nan < 1` and `nan >= 1` are both false). So each numeric
option and variable declares a `Range` once, beside what it sets, and `Range.check`
refuses in one line (a `UsageError`) anything that is not a finite number inside it.
"""

import dataclasses
import math
import numbers
import os
from typing import Optional

from smallcnn.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Range:
    """Finite numbers from `low` to `high` (None: no bound); `above` leaves `low` itself
    out, `below` leaves `high` out."""

    low: Optional[float] = None
    high: Optional[float] = None
    above: bool = False
    below: bool = False

    def __contains__(self, value):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
                not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.above and value == self.low)):
            return False
        return self.high is None or value < self.high or (not self.below and value == self.high)

    def describe(self):
        """What the range allows, as the end of 'X must be ...'."""
        low, high = _number(self.low), _number(self.high)
        if self.low is None and self.high is None:
            return "a finite number"
        if self.high is None:
            return f"above {low}" if self.above else ("0 or more" if self.low == 0
                                                       else f"at least {low}")
        if self.low is None:
            return f"below {high}" if self.below else f"at most {high}"
        if self.above == self.below:
            return f"between {low} and {high}" + (" (exclusive)" if self.above else "")
        return (f"above {low} and at most {high}" if self.above
                else f"at least {low} and below {high}")

    def check(self, name, value, received=None):
        """`value`, when it is in the range; else a UsageError naming `name` (an option
        or a variable) and showing `received` (default: the value)."""
        if value not in self:
            shown = value if received is None else received
            raise UsageError(f"{name} must be {self.describe()}. Received: {shown}")
        return value


def from_environment(variable, default, allowed):
    """The number in `$variable`, or `default` when it is unset or empty; anything that
    is not a finite number in `allowed` (a `Range`) is refused in one line."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    return allowed.check(variable, value, received=repr(text))


def _number(value):
    """1 as 1, 1e6 as 1000000, 0.5 as 0.5: bounds as people write them."""
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else repr(value)
