"""Public knowledge (the ``public`` group): a public image pool and a network pretrained on it.

:mod:`.pool` lists, fingerprints and decodes the folder; :mod:`.pretrain` trains (or loads)
the network; :mod:`.knowledge` holds both with the public embedding the stages share.
Nothing here reads private data or spends budget.
"""

from dpgd.public.knowledge import PublicKnowledge, PublicShape, prepare_public
from dpgd.public.pool import PublicPool, check_public_files, fingerprint, load_public_pool

__all__ = ["PublicKnowledge", "PublicPool", "PublicShape", "check_public_files", "fingerprint", "load_public_pool",
           "prepare_public"]
