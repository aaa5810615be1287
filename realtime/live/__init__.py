"""``comostream live``: microphone to speaker through the streaming engine.

:mod:`.app` runs it (devices, rings, the inference worker, the status line); :mod:`.audio` holds
the PortAudio callback side (lock-free rings, mixer); :mod:`.streams` opens the devices;
:mod:`.devices` lists and resolves them; :mod:`.console` reads the typed commands.
"""
