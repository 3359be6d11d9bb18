"""What a dpgd release treats as public, listed in ``results.json["privacy"]``.

The guarantee covers the private train split under add/remove of one record. Everything
below is assumed known to everyone (or chosen without looking at the private data); a
user whose setting differs (e.g. a test split that is itself private) must not publish
numbers computed from it.
"""

from __future__ import annotations

PUBLIC_ASSUMPTIONS = (
    "the test split: every accuracy in results.json (distilled set, pool, expert) is measured on it",
    "the configuration, including the public seed and everything drawn from it (initial weights, DSA "
    "augmentation, k-means, DP-MERF's random frequencies, PE's embedding network); DP noise and Poisson "
    "masks are NOT drawn from it",
    "the data set's shape (channels, image size), class names and number of classes, and the "
    "normalisation constants (published constants or the neutral 0.5/0.5, never train-split statistics)",
    "the record counts are NOT public: N and every N_c come from the noisy class histogram (component "
    "'counts' in the ledger)",
    "generator=pe: the candidate source (generator.pe.public_root or the pretrained model) is public data",
)


def public_assumption(public: dict) -> str:
    """The assumption a run with ``public=folder`` adds: its public pool, by fingerprint."""
    weights = public.get("weights_file")
    network = (f"the user's pretrained weights {weights}" if weights else
               f"a network pretrained on its {public.get('pretrained_labels')} folder labels")
    return (f"public=folder: the {public['images']} images under {public['root']} (sha256 of names and bytes "
            f"{public['fingerprint']}) are public data, not private records; PE's candidates, {network} and the "
            "embeddings built on it come from them and from no private record")
