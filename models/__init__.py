"""Everything inference needs, and nothing of training (never imports ``training``).

The conversion chain (:mod:`.chain`: content -> conditioner -> one-step target -> vocoder, offline
and block by block) and its networks (:mod:`.acoustic`, :mod:`.content`, :mod:`.conditioner`,
:mod:`.backbone`, :mod:`.edm`, :mod:`.samplers`, :mod:`.vocoder`); the features they consume
(:mod:`.mel`, :mod:`.loudness`, :mod:`.frames`, F0 in :mod:`.f0`, :mod:`.f0_yin`,
:mod:`.f0_track`, :mod:`.f0_post`); the streaming building blocks (:mod:`.streaming`,
:mod:`.noise`); users' own encoders and vocoders (:mod:`.ext_content`, :mod:`.ext_vocoder`);
configuration (:mod:`.config`), singer-mix weights (:mod:`.mix`), checkpoint reading
(:mod:`.checkpoint_io`), audio files (:mod:`.audio`), voice prints (:mod:`.voiceprint`) and the
shipped model and data (:mod:`.shipped`).
"""
