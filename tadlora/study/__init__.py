"""Studies over many runs: sweep files, sweeps, reports and plots."""
