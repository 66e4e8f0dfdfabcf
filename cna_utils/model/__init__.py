"""The model and its architecture: families (the map), loading, weights, install, hooks, forward."""
