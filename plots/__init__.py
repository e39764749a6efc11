"""Scripts that turn saved results into figures: python -m plots.landscape, plots.fit1d, plots.curves, plots.bench."""
