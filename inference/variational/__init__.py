"""Variational inference: SVI and MAP (svi), the objectives (ELBO, IWAE, importance weights), the one
optimisation loop's convergence, minibatch training (train, lightning). Imports the core only."""
