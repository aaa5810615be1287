"""The streaming runtime, and the applications built on it in their own sub-packages.

Runtime core (this folder): :mod:`.engine` (``StreamingConverter``: audio in at any rate ->
converted audio out, chunk by chunk, constant delay), its input features :mod:`.frontend`, the
stream's :mod:`.geometry` (model rate, hop, block and their samples), the stateful
:mod:`.resample`, :mod:`.window` (non-streaming vocoders run window by window), the model step
traced (:mod:`.traced`, CPU) or captured (:mod:`.cuda_graph`), several streams in one batched step
(:mod:`.batch`), the audio-thread / worker-thread split (:mod:`.runner`) and model files to
engines (:mod:`.load`). The conversion chain itself is :mod:`comostream.models.chain`.

Applications: :mod:`.live` (``comostream live``: microphone to speaker), :mod:`.serve`
(``comostream serve``, ``client``, ``bridge``: WebSocket streaming and the browser page),
:mod:`.files` (``comostream convert`` and ``demo``).
"""
