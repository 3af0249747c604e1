"""Sampling: NUTS from pieces (:mod:`.metric`, :mod:`.integrator`, :mod:`.termination`,
:mod:`.adaptation`) wired in :mod:`.nuts`; ``run_nuts`` (:mod:`.mcmc`) on the core's potential, chains in
processes (:mod:`.chains`), Pyro's kernel as the reference (:mod:`.pyro_engine`), enumerated sites
recovered (:mod:`.recovery`); discrete sites moved by HMC-within-Gibbs (:mod:`.discrete`,
:mod:`.hmc_within_gibbs`) or a model's own conditionals (``run_gibbs``, :mod:`.gibbs_sweeps`). Imports the
core only."""
