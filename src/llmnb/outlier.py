"""Loss-spike reporting, as llm.c's llmc/outlier_detector.h: the z-score of each new value against
a moving window of the last 64 values (sums kept in float64, as the C keeps doubles)."""
import math

WINDOW = 64


class OutlierDetector:
    """update(x) -> z-score of x over the window including x; NaN until the window is full."""

    def __init__(self, window=WINDOW):
        self.buffer = [0.0] * window
        self.count = 0   # values seen, up to the window size
        self.index = 0   # where the next value replaces the oldest, once full
        self.sum = 0.0
        self.sum_sq = 0.0

    def update(self, x):
        x = float(x)
        n = len(self.buffer)
        if self.count < n:  # still filling the window
            self.buffer[self.count] = x
            self.sum += x
            self.sum_sq += x * x
            self.count += 1
            return math.nan
        old = self.buffer[self.index]
        self.buffer[self.index] = x
        self.sum += x - old
        self.sum_sq += x * x - old * old
        self.index = (self.index + 1) % n
        mean = self.sum / n
        var = self.sum_sq / n - mean * mean
        std = math.sqrt(var) if var > 0 else 0.0
        return 0.0 if std == 0.0 else (x - mean) / std
