"""WebSocket streaming: ``comostream serve``, ``client`` and ``bridge`` (``docs/protocol.md``).

:mod:`.protocol` is the wire format (pure encoding); :mod:`.config` the server's settings;
:mod:`.engines` the engine factory over the shared models; :mod:`.session` one connection's
engine, queues and worker; :mod:`.http_routes` answers plain HTTP (``/health``, the browser page
in ``web/``); :mod:`.server` accepts connections and runs their sessions; :mod:`.client` streams
a file, :mod:`.bridge` sound devices, through a server.
"""
