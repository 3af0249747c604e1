"""Model-agnostic inference for Pyro models: SVI, MAP and NUTS into ArviZ, comparison and diagnostics.

    >>> import inference, zoo
    >>> m = zoo.get("gmm", n_components=3)
    >>> svi = inference.fit_svi(m, data)          # TraceEnum_ELBO: assignments enumerated
    >>> nuts = inference.run_nuts(m, data)        # assignments summed out
    >>> inference.compare(svi, nuts)              # one row per identifiable scalar
    >>> print(inference.diagnose(nuts))

Every function takes a zoo model or any plain Pyro callable ``model(data)``, or ``model(*args, **kwargs)``
given ``model_args``/``model_kwargs``; ``check`` says what is wrong with a model/guide pair before a long
fit; ``from_pyro`` brings a Pyro MCMC run, trained guide or draws in. Importing changes no global setting
of Pyro.
"""

from inference.bridges import from_pyro
from inference.checks.check import CheckReport, check
from inference.checks.compare import compare
from inference.checks.diagnostics import Diagnosis, diagnose
from inference.checks.ppc import PPCResult, ppc
from inference.checks.sbc import sbc
from inference.checks.sbc_result import SBCResult
from inference.checks.select import loo, select
from inference.posterior import Posterior
from inference.reporting.report import write_report
from inference.sampling.gibbs_sweeps import run_gibbs
from inference.sampling.mcmc import run_nuts
from inference.sampling.recovery import discrete_draws
from inference.variational.optimization import SVIDivergedError
from inference.variational.svi import fit_svi

__all__ = ["CheckReport", "Diagnosis", "PPCResult", "Posterior", "SBCResult", "SVIDivergedError", "check",
           "compare", "diagnose", "discrete_draws", "fit_svi", "from_pyro", "loo", "ppc", "run_gibbs", "run_nuts",
           "sbc", "select", "write_report"]
