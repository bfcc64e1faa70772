"""Models: the registry and its built-in entries, weights, devices, loading, and the predictors that put every family behind one interface."""
