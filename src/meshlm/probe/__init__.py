"""Diagnostics of recursion (spec section 5): states, update magnitudes, CKA, spectra, router weights.

``collect_states`` reads the states of one forward pass, the metrics reduce state matrices,
``ProbeAccumulator`` summarises them over samples, ``probe_model`` / ``probe_dir`` /
``compare_dirs`` run it all on held-out data and ``write_figures`` draws the paper's figures.
"""

from meshlm.probe.aggregate import ProbeAccumulator
from meshlm.probe.figures import write_figures
from meshlm.probe.metrics import cka, cka_matrix, effective_rank, router_stats, spectrum, update_magnitude
from meshlm.probe.run import compare_dirs, probe_dir, probe_model
from meshlm.probe.states import collect_states, default_split, probe_layout

__all__ = [
    "ProbeAccumulator",
    "cka",
    "cka_matrix",
    "collect_states",
    "compare_dirs",
    "default_split",
    "effective_rank",
    "probe_dir",
    "probe_layout",
    "probe_model",
    "router_stats",
    "spectrum",
    "update_magnitude",
    "write_figures",
]
