"""The thresholds of every verdict, defined once: diagnose, compare, LOO, k-hat and the reports that
explain them read them here (and print them from here), so a threshold changes in one place.

References: Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021) for R-hat and ESS; Vehtari, Simpson,
Gelman, Yao & Gabry (2024) for Pareto k; Betancourt (2016) for E-BFMI.
"""

#: MCMC: chains have mixed when the rank-normalized split R-hat of every quantity is at most this ...
RHAT_MAX = 1.01
#: ... and its bulk and tail effective sample sizes are at least this
ESS_MIN = 400
#: E-BFMI below this: the momentum resampling explores the energy levels poorly
BFMI_MIN = 0.3

#: Pareto k-hat of importance ratios (an SVI guide's draws, a PSIS-LOO point): below KHAT_GOOD importance
#: sampling converges fast; up to KHAT_MAX usable with care; above it the weights cannot be trusted
KHAT_GOOD = 0.5
KHAT_MAX = 0.7

#: two posteriors agree on a quantity when |mean_a - mean_b| / sd_b is below AGREE_SMD and sd_a / sd_b lies
#: in SD_RATIO
AGREE_SMD = 0.25
SD_RATIO = (0.5, 2.0)
