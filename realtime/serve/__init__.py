"""WebSocket streaming: ``comostream serve``, ``client`` and ``bridge`` (``docs/protocol.md``).

:mod:`.protocol` is the wire format (pure encoding); :mod:`.server` accepts connections and owns
the engine factory; :mod:`.session` is one connection's engine, queues and worker;
:mod:`.http_routes` answers plain HTTP (``/health``, the browser page in ``web/``);
:mod:`.client` streams a file, :mod:`.bridge` sound devices, through a server.
"""
