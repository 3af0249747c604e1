"""Model-agnostic inference for Pyro models: SVI, MAP and NUTS into ArviZ, comparison and diagnostics.

    >>> import inference, zoo
    >>> m = zoo.get("gmm", n_components=3)
    >>> svi = inference.fit_svi(m, data)          # TraceEnum_ELBO: assignments enumerated
    >>> nuts = inference.run_nuts(m, data)        # assignments summed out
    >>> inference.compare(svi, nuts)              # one row per identifiable scalar
    >>> print(inference.diagnose(nuts))

Every function takes a zoo model or any plain Pyro callable ``model(data)``.
"""

import pyro

# PyroModule parameters live in their modules, not in Pyro's global param store: fits of two copies
# of one model never share state (the style of Pyro's examples/svi_torch.py).
pyro.settings.set(module_local_params=True)

from inference.compare import compare  # noqa: E402
from inference.diagnostics import Diagnosis, diagnose  # noqa: E402
from inference.mcmc import discrete_draws, run_nuts  # noqa: E402
from inference.posterior import Posterior  # noqa: E402
from inference.ppc import PPCResult, ppc  # noqa: E402
from inference.report import write_report  # noqa: E402
from inference.sbc import SBCResult, sbc  # noqa: E402
from inference.select import loo, select  # noqa: E402
from inference.svi import SVIDivergedError, fit_svi  # noqa: E402

__all__ = ["Diagnosis", "PPCResult", "Posterior", "SBCResult", "SVIDivergedError", "compare", "diagnose",
           "discrete_draws", "fit_svi", "loo", "ppc", "run_nuts", "sbc", "select", "write_report"]
