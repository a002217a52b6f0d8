"""The numerical engine: masks in, sparse Fourier explanations out. No network, no UI.

Modules, leaves first: bch, fourier, design (design sizes), plan (the Plan record), oracle
(value-function protocol), indices, explanation, baseline (linear LASSO), spex, proxyspex,
exhaustive, planner, explainer. Nothing here imports providers, rich, typer, jinja2 or matplotlib.
"""
