"""Files through the streaming engine: ``comostream convert`` (:mod:`.convert`) and
``comostream demo`` (:mod:`.demo`, with the per-singer conversions of :mod:`.demo_convert`)."""
