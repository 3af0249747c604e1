"""Sampling: NUTS from pieces (:mod:`.metric`, :mod:`.integrator`, :mod:`.termination`,
:mod:`.adaptation`) wired in :mod:`.nuts`."""
