"""Turn a results table into scaling-law fits and figures (no torch, Ray or DeepSpeed here).

Pipeline, one module per step:
    table        read sweep dirs / CSVs into canonical columns (family, flops, n_params, tokens, loss)
    envelope     approach 1: power laws through the best run per budget
    isoflop      approach 2: per-budget parabolas in log N, power laws N*(C), D*(C), L*(C)
    parametric   approach 3: Hoffmann's L = E + A/N^alpha + B/D^beta from the 4,500-start grid
    lbfgs        the batched L-BFGS that makes approach 3 fast
    bootstrap    intervals for approaches 2 and 3
    multipliers  cross-family compute multipliers; held-out check of the extrapolation
    sweep        fit_sweep(df, FitOptions()) -> SweepResult: everything above, per group
    report       CSV / Markdown / JSON writers;  plots: make_figures(result, out_dir)
    cli          `scaling fit` and `scaling plot`
    synthetic    planted-truth sweeps for tests and sanity checks
Fits return frozen dataclasses and raise analysis.errors.FitError when they cannot be trusted.
"""
