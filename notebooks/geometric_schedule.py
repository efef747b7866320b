"""A user mask schedule: square vectors on a geometric size ladder, coarse to fine (``notebooks/custom_schedule``).

Registered as ``geometric``. Rung ``i`` is an ``a_i x a_i`` vector with ``a_i = start * ratio**i``; each rung is its
own stage, starts from the rung before (upsampled, like DM's Eq. 7) and is gated by it (like Eq. 8), so the map is
refined from coarse blobs to fine detail. Rungs larger than the image are left out. ``M_c`` sums every rung.
"""

from hdm_lightning import MaskSchedule, MaskVector, Stage, register_schedule


@register_schedule("geometric")
class GeometricLadder(MaskSchedule):
    """Vectors ``start * ratio**i`` (``i < rungs``), each trained after, started from and gated by the previous."""

    def __init__(self, start=4, ratio=2, rungs=4, steps=100, lr=0.05, eta=10.0):
        if int(ratio) != ratio or ratio < 2 or start < 1 or rungs < 1 or steps < 1:
            raise ValueError(
                f"need an integer ratio >= 2, start, rungs, steps >= 1; got {ratio}, {start}, {rungs}, {steps}"
            )
        self.sizes = [int(start * ratio**i) for i in range(rungs)]
        self.steps, self.lr, self.eta = int(steps), float(lr), float(eta)

    def plan(self, height, width):
        """One stage per rung that fits the image, in order of size."""
        stages, previous = [], None
        for a in (a for a in self.sizes if a <= min(height, width)):
            vector = MaskVector(f"g{a}", (a, a), lr=self.lr, reg_weight=self.eta, guide=previous, init_from=previous)
            stages.append(Stage(f"rung{a}", (vector,), self.steps))
            previous = vector.name
        if not stages:
            raise ValueError(f"no rung of {self.sizes} fits a {height}x{width} image: lower start")
        return stages
