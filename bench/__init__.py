"""The ``comostream bench ...`` measurements.

:mod:`.f0` (F0 backends' accuracy and cost), :mod:`.content` and :mod:`.content_recon` (the content
encoder on held-out singers, with the linear :mod:`.probes`), :mod:`.vocoder` (resynthesis
quality), :mod:`.acoustic` (one-step target vs the N-step teacher), :mod:`.quality` (conversions
of held-out lines), :mod:`.latency` (what the streaming engine costs and how late it is) and
:mod:`.gpu_check` (CUDA-graph replay and batched streams, on a GPU machine); :mod:`.corpus` makes
the synthetic corpus they run on when none is named.
"""
