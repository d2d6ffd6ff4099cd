"""``dsw-ray bench`` and what only it uses, apart from the engine: these modules import the
stages, the stages never import them.

- ``sections``: the benchmark's sections, its table and the command;
- ``split``: a run's wall time split into the work its actors did and fixed costs;
- ``gpu_cost``: model FLOPs, MFU, GPU peaks and the projection of a round onto GPU nodes.
"""
