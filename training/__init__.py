"""Offline work: corpora, preprocessing and training (nothing at inference imports it).

Corpora: the synthetic singing corpus (:mod:`.synth`, :mod:`.melody`, :mod:`.voices`,
:mod:`.world_ops`), the real recorded voices (:mod:`.real`, :mod:`.asterisk`, :mod:`.debs`)
and the loader (:mod:`.corpus`). Preprocessing: cached features
(:mod:`.features`, :mod:`.feature_index`), WORLD perturbation (:mod:`.perturb`), GTA mels
(:mod:`.vocoder_gta`). Training: the one loop (:mod:`.loop`, :mod:`.state`, :mod:`.sampler`,
:mod:`.distributed`, :mod:`.runlog`, :mod:`.checkpoint`) and its stages: content encoder
(:mod:`.content`, :mod:`.content_data`), acoustic model (:mod:`.acoustic`, :mod:`.dataset`,
:mod:`.losses`), vocoder (:mod:`.vocoder`, :mod:`.vocoder_data`, :mod:`.vocoder_losses`); the
shipped model's recipe (:mod:`.recipe`).
"""
