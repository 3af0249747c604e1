"""What a fit is worth: diagnose, compare, check, sbc, ppc, select/loo, the guide's importance weights
(k-hat) and the amortization gap. Imports the core, sampling and variational."""
